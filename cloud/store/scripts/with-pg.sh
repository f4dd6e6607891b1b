#!/usr/bin/env bash
# with-pg.sh CMD [ARGS...]: runs CMD with OUTRIDER_TEST_PG pointing at a PostgreSQL server — the
# one OUTRIDER_TEST_PG already names, or a throwaway one (pg-test.sh: initdb + pg_ctl as a
# non-root user, 127.0.0.1, a free port; PostgreSQL installed with apt-get when missing and run as
# root) started for CMD and stopped, with its data deleted, when CMD ends. Exits with CMD's status.
#
#   bash cloud/store/scripts/with-pg.sh cargo test --workspace --locked
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi
if [[ -n ${OUTRIDER_TEST_PG:-} ]]; then
    exec "$@"
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUTRIDER_PG_HOME=${OUTRIDER_PG_HOME:-$(mktemp -d -t outrider-pg-XXXXXX)}
export OUTRIDER_PG_HOME
trap 'bash "$here/pg-test.sh" stop' EXIT
env_line=$(bash "$here/pg-test.sh" start)
eval "$env_line"
export OUTRIDER_TEST_PG
echo "with-pg.sh: PostgreSQL for the tests: OUTRIDER_TEST_PG=$OUTRIDER_TEST_PG" >&2
"$@"
