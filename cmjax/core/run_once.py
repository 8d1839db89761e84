"""Programs that run once (initializing a state) compiled for compile time, not run time."""

from __future__ import annotations

from typing import Any

import jax

# On CPU, LLVM's optimization passes dominate compiling a state initialization (the digits
# UNet's init: 16.5 s at the default level, 3.3 s at level 0, 2 cores) and buy nothing for a
# program that runs once. Its outputs differ from an optimized build's by at most 1 ulp
# (float rounding of the normal/uniform transforms), and every path that builds a state uses
# this one.
_ONCE = {"xla_backend_optimization_level": 0}


def call_once(jitted: Any, *args: Any) -> Any:
    """``jitted(*args)`` for a ``jax.jit``-wrapped function that runs once: compiled without
    backend optimizations on CPU. Inside a trace (``jax.eval_shape``, an outer ``jit``) it is
    a plain nested call."""
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args)):
        return jitted(*args)
    if jax.default_backend() != "cpu":
        return jitted(*args)
    return jitted.lower(*args).compile(compiler_options=_ONCE)(*args)
