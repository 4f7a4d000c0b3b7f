"""The config groups (YAML only), installed as the package `antibody.conf` so that
`importlib.resources` finds them in any install; see pyproject.toml."""
