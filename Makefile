# apicore — PGXS build plus the three test layers, fuzzing and benchmarks.
#
# Tests never touch the system installation: `make sandbox` copies the
# PostgreSQL binaries into tmp_check/sandbox (PostgreSQL finds its share and
# lib directories relative to its binaries) and installs apicore there, so
# tests run as any unprivileged user and several checkouts can test at once.

EXTENSION    = apicore
EXTVERSION   = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" apicore.control)
MODULE_big   = apicore
OBJS         = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
DATA_built   = sql/apicore--$(EXTVERSION).sql
DATA         = $(filter-out $(DATA_built),$(wildcard sql/apicore--*.sql))
PG_CPPFLAGS  = -DAPICORE_VERSION='"$(EXTVERSION)"'
PG_CFLAGS    = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare -Wno-cast-function-type
SHLIB_LINK   = -lsodium

# pg_regress suites: every sql/<topic>.sql except the install/upgrade scripts.
REGRESS      = $(sort $(basename $(notdir $(filter-out sql/apicore--%,$(wildcard sql/*.sql)))))
ISOLATION    = $(sort $(basename $(notdir $(wildcard test/specs/*.spec))))
TAP_TESTS    = $(sort $(wildcard test/t/*.pl))

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS does not track header dependencies: any header change rebuilds all,
# and so does a new version in apicore.control (APICORE_VERSION).
$(OBJS): $(wildcard src/*.h) apicore.control

# The install script is assembled from one fragment per capability, in order.
$(DATA_built): $(sort $(wildcard sql/install/*.sql))
	@echo "-- apicore $(EXTVERSION): generated from sql/install/*.sql by make; edit those files" > $@
	@printf '%s\n' '\echo Use "CREATE EXTENSION apicore" to load this file. \quit' >> $@
	cat $^ >> $@

PG_BINDIR    := $(shell $(PG_CONFIG) --bindir)
PG_PKGLIBDIR := $(shell $(PG_CONFIG) --pkglibdir)
PG_SHAREDIR  := $(shell $(PG_CONFIG) --sharedir)
SANDBOX      := $(CURDIR)/tmp_check/sandbox
SB_BIN       := $(SANDBOX)$(PG_BINDIR)
SB_PGXS      := $(SANDBOX)$(PG_PKGLIBDIR)/pgxs
REGRESS_CONF := $(CURDIR)/test/regress.conf

.PHONY: sandbox regress isolation tap test fuzz sqlsmith bench demo valgrind

sandbox: all
	rm -rf $(SANDBOX)
	mkdir -p $(SANDBOX)$(dir $(PG_BINDIR)) $(SANDBOX)$(dir $(PG_SHAREDIR))
	cp -a $(abspath $(PG_BINDIR)/..)/. $(SANDBOX)$(abspath $(PG_BINDIR)/..)/
	cp -a $(PG_SHAREDIR) $(SANDBOX)$(dir $(PG_SHAREDIR))
	$(MAKE) install DESTDIR=$(SANDBOX) >/dev/null

regress: $(if $(SANDBOX_READY),,sandbox)
	$(SB_PGXS)/src/test/regress/pg_regress --bindir=$(SB_BIN) \
	  --temp-instance=tmp_check/regress --temp-config=$(REGRESS_CONF) \
	  --inputdir=. --outputdir=tmp_check/regress_out --load-extension=apicore \
	  --dbname=contrib_regression $(REGRESS)

isolation: $(if $(SANDBOX_READY),,sandbox)
	$(SB_PGXS)/src/test/isolation/pg_isolation_regress --bindir=$(SB_BIN) \
	  --temp-instance=tmp_check/isolation --temp-config=$(REGRESS_CONF) \
	  --inputdir=test --outputdir=tmp_check/isolation_out --load-extension=apicore \
	  --dbname=isolation_regression $(ISOLATION)

# Logs land in tmp_check/tap/tmp_check/log on every version: 15 derives the
# place from TESTDIR, 17 and later take TESTDATADIR and TESTLOGDIR.
tap: sandbox
	rm -rf tmp_check/tap && mkdir -p tmp_check/tap
	TESTDIR='$(CURDIR)/tmp_check/tap' TESTDATADIR='$(CURDIR)/tmp_check/tap/tmp_check' \
	  TESTLOGDIR='$(CURDIR)/tmp_check/tap/tmp_check/log' PATH="$(SB_BIN):$$PATH" PGPORT=65432 \
	  PG_REGRESS='$(SB_PGXS)/src/test/regress/pg_regress' \
	  $(PROVE) -I $(SB_PGXS)/src/test/perl -I test/t $(PROVE_FLAGS) $(TAP_TESTS)

# Every layer, with a summary of pass/fail counts; non-zero exit on any failure.
test:
	test/run-all

fuzz:
	test/fuzz/run

# Random SQL (sqlsmith) as an application role against every capability in use.
sqlsmith: $(if $(SANDBOX_READY),,sandbox)
	test/sqlsmith/run

bench: sandbox
	test/bench/run

demo:
	scripts/demo

# Valgrind: the sandbox's postgres is wrapped so that every server process
# runs under memcheck, then the regression and isolation suites run.  Only
# reports whose stack passes through apicore.so count (the server itself
# has known, suppressed-upstream reports such as padding bytes sent to WAL).
# Slow (about 10 minutes here); .ci/run runs it after test/run-all.
valgrind: sandbox
	rm -rf tmp_check/valgrind && mkdir -p tmp_check/valgrind
	mv $(SB_BIN)/postgres $(SB_BIN)/postgres.real
	printf '#!/bin/sh\nexec valgrind --quiet --error-limit=no --num-callers=30 --log-file=$(CURDIR)/tmp_check/valgrind/%%p.log $(SB_BIN)/postgres.real "$$@"\n' > $(SB_BIN)/postgres
	chmod +x $(SB_BIN)/postgres
	$(MAKE) -s regress isolation SANDBOX_READY=1
	@test/valgrind-report tmp_check/valgrind
