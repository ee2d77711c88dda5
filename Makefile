# disco - top-level entry points. CMake does the building; this file installs
# what a fresh Debian 12 machine lacks and names the common tasks.
#
#   make          build build/disco
#   make run      install dependencies, build, serve on 127.0.0.1:8087
#   make check    install dependencies, build, run every test (plain build,
#                 then the ASan+UBSan build, then the e2e suites under
#                 valgrind), then each fuzz target for CHECK_FUZZ_SECONDS
#   make fuzz     build the libFuzzer targets (clang) and run each for
#                 FUZZ_SECONDS; fails on any crash, leak or sanitizer report
#   make valgrind the e2e suites with every disco under valgrind memcheck
#   make bench    disco vs a real etcd 3.4 in the same run (bench/README.md)
#   make format   clang-format the sources

BUILD      ?= build
SAN_BUILD  ?= build-asan
JOBS       ?= $(shell nproc)
ADDR       ?= 127.0.0.1:8087
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS       ?= 120
CHECK_FUZZ_SECONDS ?= 40
FUZZ_TARGETS = fuzz_http fuzz_form fuzz_v2

# Debian packages: build tools, libraries, and the real etcd the tests use.
DEPS = build-essential cmake pkg-config python3 clang-format \
       libhttp-parser-dev uthash-dev liblmdb-dev libcmocka-dev \
       etcd-server etcd-client \
       clang libclang-rt-14-dev valgrind

.PHONY: all deps run check test test-asan fuzz-build fuzz check-fuzz valgrind bench format clean

all: $(BUILD)/disco

deps:
	@missing=$$(for p in $(DEPS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BUILD)/disco: FORCE
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: deps all
	./$(BUILD)/disco serve --addr $(ADDR)

test: all
	cd $(BUILD) && ctest --output-on-failure

test-asan:
	@cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DDISCO_SANITIZE=ON >/dev/null
	@cmake --build $(SAN_BUILD) -j $(JOBS)
	cd $(SAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure

check: deps
	$(MAKE) test
	$(MAKE) test-asan
	$(MAKE) valgrind
	$(MAKE) check-fuzz

# libFuzzer needs clang; the whole tree is built instrumented in FUZZ_BUILD.
fuzz-build:
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DDISCO_FUZZ=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(FUZZ_TARGETS)

fuzz: fuzz-build
	tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

check-fuzz: fuzz-build
	tests/fuzz/run.sh $(FUZZ_BUILD) $(CHECK_FUZZ_SECONDS) $(FUZZ_TARGETS)

valgrind: all
	tests/valgrind/run.sh $(BUILD)

BENCH_DEPS = wrk nginx-light
bench: deps all
	@missing=$$(for p in $(BENCH_DEPS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	python3 bench/bench.py

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(SAN_BUILD) $(FUZZ_BUILD)

FORCE:
