#!/usr/bin/env bash
# Build llama-cpp-python[server] into the active venv with CPU flags that this CPU has.
# The default (native) build enables AMX kernels that segfault on some of these CPUs, and a
# fixed AVX-512 build dies with "Illegal instruction" on CPUs without AVX-512, so each
# ISA extension is turned on only when /proc/cpuinfo lists it. AMX stays off.
set -euo pipefail
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
has() { [[ " $flags " == *" $1 "* ]]; }
args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
on() { if has "$1"; then args+=" -D$2=ON"; else args+=" -D$2=OFF"; fi; }
on avx GGML_AVX; on avx2 GGML_AVX2; on fma GGML_FMA; on f16c GGML_F16C; on bmi2 GGML_BMI2
on avx_vnni GGML_AVX_VNNI; on avx512f GGML_AVX512; on avx512vbmi GGML_AVX512_VBMI
on avx512_vnni GGML_AVX512_VNNI; on avx512_bf16 GGML_AVX512_BF16
echo "llama-cpp-python build flags: $args"
CMAKE_ARGS="$args" python -m pip install -q --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
python -m pip install -q "llama-cpp-python[server]==0.3.36"
# smoke test: load nothing, but import the native library (an illegal instruction shows up at model load,
# which the test fixture reports)
python -c "import llama_cpp.server"
