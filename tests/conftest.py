"""Every test process sees 8 virtual CPU devices, so sharded paths run for real."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The suite runs on CPUs. scripts/setup_env.sh puts libtpu outside sys.path for the planner's
# TPU compiles (jaxrank/perf/tpu_target.py); JAX loads it from TPU_LIBRARY_PATH on demand only.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_LIBTPU = os.path.join(os.path.dirname(__file__), "..", ".venv", "libtpu", "libtpu", "libtpu.so")
if os.path.isfile(_LIBTPU):
    os.environ.setdefault("TPU_LIBRARY_PATH", os.path.abspath(_LIBTPU))

import jax  # noqa: E402  (the environment above must be set before JAX starts)

jax.config.update("jax_num_cpu_devices", 8)
