"""The GPU check's expected duration on one H100, printed before it runs: counted FLOPs for
the training steps and stated assumptions for everything else (nothing here was measured
on a GPU yet; `make gpu-check` prints the measured total beside it)."""

from __future__ import annotations

from antibody.app.study.cost import PEAKS, TRAIN_UTILISATION, Accelerator

H100_BF16_FLOPS = PEAKS[Accelerator.H100].flops  # with its source, in app/study/cost.py

# meta-llama/Llama-2-7b-hf, config.json (hub model card files): the decoder's shape.
# vocab_size 32000 is replaced by the tokenizer's (scripts/gpu_check.py says why); rope_theta is
# LlamaConfig's default 10000.0, which that config.json leaves unset.
LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}


# the time a default run should take on one H100 (the device window of a check)
BUDGET_MINUTES = 8.0
# the expectation's assumptions: nothing here was measured on a GPU yet
NF4_SLOWDOWN = 2.0  # dequantising every weight per use (assumed)
DISK_BYTES_PER_S = 1e9  # writing and reading the random model (assumed)
NF4_QUANTISE_S = 60.0  # quantising a 7B model at load (assumed)
PER_METHOD_S = 15.0  # data module, trainer, LoRA set-up per method (assumed)
GPU_TESTS_S = 120.0  # pytest -m gpu on the tiny model (assumed)
CHECKS_S = 45.0  # per mode: generation and judge, stacked adapter, the three resume fits (assumed)
EXPECTED_BASIS = (f"counted FLOPs, 6 x parameters x tokens x the bench's passes per step, at "
                  f"{TRAIN_UTILISATION:.0%} of the H100's bf16 peak, nf4 x{NF4_SLOWDOWN:g}; plus assumed fixed "
                  f"costs: the model written and read at {DISK_BYTES_PER_S / 1e9:g} GB/s, nf4 quantisation "
                  f"{NF4_QUANTISE_S:.0f} s, {PER_METHOD_S:.0f} s set-up per method, {CHECKS_S:.0f} s of checks per mode, "
                  f"{GPU_TESTS_S:.0f} s of gpu tests")


def model_parameters(layers: int, vocab: int = 49152) -> int:
    """Parameters of the check's model: Llama-2-7B's decoder, `layers` deep, with the embedded
    tokenizer's vocabulary in its embeddings and head."""
    c = LLAMA2_7B
    d, f = c["hidden_size"], c["intermediate_size"]
    return layers * (4 * d * d + 3 * d * f + 2 * d) + d + 2 * vocab * d


def expected_minutes(args) -> float:
    """The run's expected duration on one H100 (EXPECTED_BASIS says what it assumes)."""
    from antibody.app.bench.stats import EXPECTED, REFERENCE, STAGE_METHODS
    from antibody.config.schema import Stage

    stage_methods = {s.value: [REFERENCE, *(m for m in ms if m != REFERENCE)] for s, ms in STAGE_METHODS.items()}

    n = model_parameters(args.layers)
    pass_s = 6 * n * args.batch_size * args.max_length / (H100_BF16_FLOPS * TRAIN_UTILISATION)
    passes = sum(EXPECTED[Stage(stage)][m].ratio for stage, ms in stage_methods.items() for m in ms)
    seconds = 2 * n / DISK_BYTES_PER_S + GPU_TESTS_S * (not args.no_tests)  # writing the model; the tests
    for mode in args.modes:
        slow = NF4_SLOWDOWN if str(mode) == "nf4" else 1.0
        seconds += 2 * n / DISK_BYTES_PER_S + NF4_QUANTISE_S * (str(mode) == "nf4")
        seconds += passes * (args.warmup + args.steps) * pass_s * slow
        seconds += PER_METHOD_S * sum(len(ms) for ms in stage_methods.values()) + CHECKS_S
    return seconds / 60


