# Shared by scripts/demo, test/run-all and test/bench/run.
#
# drop_root SCRIPT ARGS...: PostgreSQL refuses to run as root, so when called
# as root this installs missing Debian packages, copies the source tree to a
# scratch directory owned by the unprivileged user "pgtest" (created if
# missing) and re-runs SCRIPT there as that user.  As any other user it
# returns and the caller carries on in place.
drop_root() {
    local script="$1"; shift
    [ "$(id -u)" = 0 ] || return 0
    local root rel work
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    rel="${script#"$root"/}"
    "$root/scripts/deps"
    id pgtest >/dev/null 2>&1 || useradd --create-home --shell /bin/bash pgtest
    work="$(mktemp -d /tmp/apicore.XXXXXX)"
    (cd "$root" && tar --exclude=./tmp_check --exclude=./.git -cf - .) | tar -xf - -C "$work"
    chown -R pgtest: "$work"
    echo "running as user pgtest in $work"
    local rc=0
    runuser -u pgtest -- env BENCH_SECONDS="${BENCH_SECONDS:-}" BENCH_CLIENTS="${BENCH_CLIENTS:-}" \
        FUZZ_SECONDS="${FUZZ_SECONDS:-}" SQLSMITH_QUERIES="${SQLSMITH_QUERIES:-}" \
        ${PG_CONFIG:+PG_CONFIG="$PG_CONFIG"} "$work/$rel" "$@" || rc=$?
    # the scratch copy holds a build and a sandbox: do not leave it behind
    [ -n "${APICORE_KEEP_WORK:-}" ] || rm -rf "$work"
    exit $rc
}
