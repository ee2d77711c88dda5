# disco - top-level entry points. CMake does the building; this file installs
# what a fresh Debian 12 machine lacks and names the common tasks.
#
#   make          build build/disco
#   make run      install what building and serving need (RUN_DEPS), build,
#                 serve on 127.0.0.1:8087
#   make check    install RUN_DEPS and the test tools (CHECK_DEPS, and the
#                 npm packages of NPM_CHECK_DEPS into $(BUILD)/npm), build,
#                 run every test (plain build, then the ASan+UBSan build,
#                 then the e2e suites under valgrind), then each fuzz
#                 target for CHECK_FUZZ_SECONDS
#   make fuzz     build the libFuzzer targets (clang) and run each for
#                 FUZZ_SECONDS; fails on any crash, leak or sanitizer report
#   make valgrind the e2e suites with every disco under valgrind memcheck
#   make bench    disco vs a real etcd 3.4 in the same run (bench/README.md)
#   make format   clang-format the sources
#   make install  build, then install into $(DESTDIR)$(PREFIX): bin/disco,
#                 lib/systemd/system/disco.service, the DISC_* environment
#                 file (etc/disco/disco.env; /etc with PREFIX=/usr) and the
#                 man page (install-only: the same without building)
#   make static   build-static/disco: fully static (glibc too), for hosts
#                 with none of its libraries (Flatcar); check-static tests it

BUILD      ?= build
SAN_BUILD  ?= build-asan
JOBS       ?= $(shell nproc)
ADDR       ?= 127.0.0.1:8087
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS       ?= 120
CHECK_FUZZ_SECONDS ?= 40
FUZZ_TARGETS = fuzz_http fuzz_form fuzz_v2 fuzz_tls fuzz_h2 fuzz_etcd_client

# Debian packages. RUN_DEPS build and serve; CHECK_DEPS only test (cmocka
# unit tests, python3 e2e suites against a real etcd, clang for the fuzz
# targets, valgrind, clang-format, chromium for the token page). `make run`
# installs RUN_DEPS only;
# `make check` installs both.
RUN_DEPS   = build-essential cmake pkg-config \
             libhttp-parser-dev uthash-dev liblmdb-dev libssl-dev \
             libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler
CHECK_DEPS = python3 clang-format libcmocka-dev \
             etcd-server etcd-client \
             clang libclang-rt-14-dev valgrind systemd file openssl \
             chromium python3-etcd3 nghttp2-client curl

# npm packages the e2e tests use (tests/e2e/test_v3_npm.py: the npm client
# etcd3), installed with the machine's npm into NPM_DIR, which the test finds
# beside build/disco. Debian's npm package only where no npm is on the
# machine (an image may ship Node.js and npm of its own).
NPM_DIR        ?= $(BUILD)/npm
NPM_CHECK_DEPS  = etcd3@1.1.2
export DISCO_NPM_DIR ?= $(abspath $(NPM_DIR))

# Installs the Debian packages in $(1) that are not installed yet.
define install_missing
	@missing=$$(for p in $(1); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

PREFIX       ?= /usr/local
DESTDIR      ?=
STATIC_BUILD ?= build-static

.PHONY: all deps deps-run deps-check deps-npm run check test test-asan fuzz-build fuzz check-fuzz valgrind bench format clean \
        install install-only static check-static

all: $(BUILD)/disco

deps: deps-check

deps-run:
	$(call install_missing,$(RUN_DEPS))

deps-check:
	$(call install_missing,$(RUN_DEPS) $(CHECK_DEPS))

# Idempotent: a package already at the pinned version is not fetched again.
# Without the registry it fails with one line that says what is missing.
deps-npm:
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing: npm"; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends npm; }
	@for spec in $(NPM_CHECK_DEPS); do \
	  name=$${spec%@*}; version=$${spec##*@}; \
	  have=$$(node -p "require(process.argv[1]).version" \
	          "$(abspath $(NPM_DIR))/node_modules/$$name/package.json" 2>/dev/null); \
	  [ "$$have" = "$$version" ] && continue; \
	  echo "npm: installing $$spec into $(NPM_DIR)"; \
	  mkdir -p $(NPM_DIR) && \
	  npm install --prefix $(NPM_DIR) --no-audit --no-fund --loglevel=error "$$spec" >/dev/null || \
	  { echo "make: npm could not install $$spec into $(NPM_DIR) (is the npm registry" \
	         "reachable?); tests/e2e/test_v3_npm.py needs it" >&2; exit 1; }; \
	done

$(BUILD)/disco: FORCE
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: deps-run all
	./$(BUILD)/disco serve --addr $(ADDR)

test: all
	cd $(BUILD) && ctest --output-on-failure

test-asan:
	@cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DDISCO_SANITIZE=ON >/dev/null
	@cmake --build $(SAN_BUILD) -j $(JOBS)
	cd $(SAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure

check: deps-check deps-npm
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

BENCH_DEPS = wrk nginx-light nghttp2-client openssl etcd-server
bench: deps-check all
	@missing=$$(for p in $(BENCH_DEPS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	python3 bench/bench.py

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(SAN_BUILD) $(FUZZ_BUILD) $(STATIC_BUILD)

install: all install-only

# The unit is filled in here with the prefix installed to (CMakeLists.txt).
install-only:
	DESTDIR=$(DESTDIR) cmake --install $(BUILD) --prefix $(PREFIX)

# Fully static: Debian ships libhttp_parser.a and liblmdb.a, and a static
# glibc does not depend on the host's C library version (docs/operating.md).
static:
	@cmake -S . -B $(STATIC_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDISCO_STATIC=ON >/dev/null
	@cmake --build $(STATIC_BUILD) -j $(JOBS) --target disco
	@file $(STATIC_BUILD)/disco

check-static: static
	DISCO_STATIC_BIN=$(CURDIR)/$(STATIC_BUILD)/disco DISCO_BIN=$(CURDIR)/$(STATIC_BUILD)/disco \
	  python3 tests/e2e/test_packaging.py -v StaticBuild

FORCE:
