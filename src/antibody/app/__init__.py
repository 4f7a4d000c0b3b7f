"""The application layer; `antibody.cli` parses arguments and calls into here.

The core sits at the top: run directories (rundir), one training stage with Lightning
(stages, train, callbacks, loggers), evaluation of a run (evaluate, merge_check), the
`report` command that renders any results file into its page (report), and the small
commands and helpers every command shares (arguments, errors, logs, build_data, summary).
Each larger tool is a room of its own: study/, bench/, judge/, screen/, demo/."""
