"""``harness``: adversarial training, evaluation, the demo and sweeps.

Subcommands live in their own modules, each with ``register(app)``: ``cli_train`` (train, eval,
demo) and ``cli_sweep`` (sweep). torch is imported inside the commands.
"""

from __future__ import annotations

from curvtools.clirun import new_app, run_app
from harness import cli_sweep, cli_train

app = new_app("PGD adversarial training and evaluation with any registered activation "
              "(protocol of Singla et al., ICCV 2021 / Rice et al., 2020).")
cli_train.register(app)
cli_sweep.register(app)


def main(argv: list[str] | None = None) -> None:
    from curvtools.cpu_allocator import keep_freed_memory

    keep_freed_memory()  # ~10% on CPU, nothing computed changes (see its module)
    run_app(app, "harness", argv)


if __name__ == "__main__":
    main()
