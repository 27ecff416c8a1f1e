"""Training: `train(config, run_dir)`, `build` and `log` (loop.py) are what the commands call.

They are loaded on first use, so importing a submodule (checkpoint, trainer) does not load the
whole loop.
"""


def __getattr__(name):
    if name in ("train", "log", "build"):
        from foundations.train import loop
        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
