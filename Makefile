# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-all test-cpus test-emulated setup clean results-page

$(STAMP): pyproject.toml setup.py $(wildcard src/bitladder/kernels/c/*.[ch])
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch 2.13.0 lies on disk on the project's machines; install it first, explicitly.
	$(BIN)/python -m pip install -q torch==2.13.0
	# test + deploy + eval: the export targets' tests load each result in its own runtime; eval: the unseen corpus
	$(BIN)/python -m pip install -q -e '.[test,deploy,eval]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/bitladder ladder --model digits --out runs/digits

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m "not slow"

# The kernel, layer and export tests again as on lesser CPUs: BITLADDER_CPU caps bitladder's selection and
# activation grids; ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and FBGEMM_ENABLE_INSTRUCTIONS cap torch's, oneDNN's
# and fbgemm's own dispatch, so their 16-bit pair-sum GEMMs run on any host. Profiles: AVX2 (Zen 3), AVX-512
# without VNNI (Skylake-SP), AVX2 + AVX-VNNI (Alder Lake: oneDNN uses AVX-VNNI there, fbgemm does not), AVX-512 VNNI
# + BF16 without AMX (Cooper Lake, Zen 4: on an AMX host oneDNN's VNNI kernels run only under this cap).
CPU_TESTS := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m "not slow" tests/kernels tests/nn tests/io
test-cpus: $(STAMP)
	BITLADDER_CPU=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 $(CPU_TESTS)
	BITLADDER_CPU=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE FBGEMM_ENABLE_INSTRUCTIONS=AVX512 $(CPU_TESTS)
	BITLADDER_CPU=avx2-vnni ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2_VNNI FBGEMM_ENABLE_INSTRUCTIONS=AVX2 \
		$(CPU_TESTS)
	BITLADDER_CPU=avx512-bf16 ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 FBGEMM_ENABLE_INSTRUCTIONS=AVX512_E1 $(CPU_TESTS)

# The integer-GEMM, selection and export tests on lesser CPUs for real, not capped: qemu's user-mode emulator runs
# xdist's workers on Haswell's instructions (AVX2; TCG has no AVX-512) and Nehalem's (SSE4.2), so every library
# dispatches by the emulated cpuid, onnxruntime's MLAS too, which no variable caps: its 16-bit pair sums are the
# saturation exported graphs are proven safe from. A subset (TCG runs ~25x slower); scripts a test starts run
# natively. tests/kernels/test_cpu.py checks that the workers saw the CPU named (BITLADDER_EMULATED); the Linear
# bench's case runs every kernel and peer it times (torch.ao's died there once).
QEMU_QUIET := ,-pcid,-x2apic,-tsc-deadline,-invpcid,-spec-ctrl
EMULATED = BITLADDER_EMULATED=$(1) OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" \
	-d --tx "2*popen//python=qemu-x86_64 -cpu $(2) $(BIN)/python" $(3)
EMULATED_TESTS := tests/kernels/test_cpu.py tests/kernels/test_onednn_w8a8.py tests/kernels/test_onednn_conv.py \
	tests/kernels/test_static_w8a8.py tests/kernels/test_c_lowbit.py tests/kernels/test_select.py \
	tests/io/test_onnx_dynamic.py tests/io/test_onnx_ranges.py \
	tests/io/test_onnx_export.py::test_dynamic_int8_uses_integer_matmul_and_stays_close \
	tests/pipeline/bench/test_linear.py::test_rows_carry_the_ratio_to_fp32_on_onednn
test-emulated: $(STAMP)
	@command -v qemu-x86_64 >/dev/null || { echo "test-emulated needs qemu-x86_64 (Debian: qemu-user)"; exit 1; }
	$(call EMULATED,avx2,Haswell-v4$(QEMU_QUIET),$(EMULATED_TESTS))
	$(call EMULATED,default,Nehalem-v2$(QEMU_QUIET),$(EMULATED_TESTS))

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

# docs/RESULTS.md from docs/results/*.json (tests/test_results_page.py fails when the two drift apart).
results-page: $(STAMP)
	$(BIN)/python benchmarks/results_page.py

clean:
	rm -rf runs build *.egg-info src/*.egg-info
