#!/bin/sh
# Start a local PostgreSQL server for tests/tune/test_postgres.py (Debian; run as root).
#
# Installs Debian's postgresql if needed, starts its cluster, creates the role `lapsd`
# (password `lapsd`) and the database `lapsd_test` it owns, and prints the variable to export:
#
#   eval "$(tests/tune/start_postgres.sh)"
#   # -> LAPSD_TEST_POSTGRES_URL=postgresql://lapsd:lapsd@127.0.0.1:5432/lapsd_test
set -eu
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
pg_lsclusters -h | grep -q "^$version main " || pg_createcluster "$version" main >&2
pg_lsclusters -h | grep -q "^$version main .* online" || pg_ctlcluster "$version" main start >&2
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
psql_su() { runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -qtAc "$1"; }
[ "$(psql_su "SELECT 1 FROM pg_roles WHERE rolname = 'lapsd'")" = 1 ] ||
    psql_su "CREATE ROLE lapsd LOGIN PASSWORD 'lapsd'" >&2
[ "$(psql_su "SELECT 1 FROM pg_database WHERE datname = 'lapsd_test'")" = 1 ] ||
    psql_su "CREATE DATABASE lapsd_test OWNER lapsd" >&2
echo "export LAPSD_TEST_POSTGRES_URL=postgresql://lapsd:lapsd@127.0.0.1:$port/lapsd_test"
