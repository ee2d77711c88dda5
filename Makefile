# disco - top-level entry points. CMake does the building; this file installs
# what a fresh Debian 12 machine lacks and names the common tasks.
#
#   make          build build/disco
#   make run      install dependencies, build, serve on 127.0.0.1:8087
#   make check    install dependencies, build, run every test (plain build,
#                 then the ASan+UBSan build)
#   make bench    disco vs a real etcd 3.4 in the same run (bench/README.md)
#   make format   clang-format the sources

BUILD      ?= build
SAN_BUILD  ?= build-asan
JOBS       ?= $(shell nproc)
ADDR       ?= 127.0.0.1:8087

# Debian packages: build tools, libraries, and the real etcd the tests use.
DEPS = build-essential cmake pkg-config python3 clang-format \
       libhttp-parser-dev uthash-dev liblmdb-dev libcmocka-dev \
       etcd-server etcd-client

.PHONY: all deps run check test test-asan bench format clean

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
	rm -rf $(BUILD) $(SAN_BUILD)

FORCE:
