from zoo import _runtime

if _runtime._running_as(("zoo.bench",)):
    _runtime.reexec_with_malloc_tuning()  # as `python -m zoo.train` runs; before jax is imported

from zoo.bench.command import main  # noqa: E402

raise SystemExit(main())
