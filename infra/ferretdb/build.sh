#!/usr/bin/env bash
# Build the lab's FerretDB binary:  bash infra/ferretdb/build.sh [OUT]
#   OUT default: <repo>/.lab/bin/ferretdb
#   FERRETDB_SRC_DIR: where the patched FerretDB copy goes
#                     (default <repo>/.lab/build/ferretdb-v1.24.2; keep it stable
#                     so rebuilds hit the Go build cache)
# Needs only Go and the Go module proxy; the result is pure Go (modernc SQLite,
# no cgo), statically linked.
#
# Six upstream shortcomings in FerretDB v1.24.2 are fixed at build time (1-4, 8, 9), and three
# costs of its update path are cut, 5-7, which together halve FerretDB's CPU per
# counts update (bench/bench_counts_update.py measures it) (Go refuses
# -overlay for module-cache files, so we build against a patched copy of the
# module through a temporary go.mod (-modfile) with a replace directive;
# nothing of FerretDB is committed here):
#
# 1. internal/handler/msg_update.go defers closing each update statement's read
#    iterator until the whole `update` command ends. An UpdateOne that matches
#    a document stops reading early, so each such statement keeps a backend
#    connection checked out. One `update` command (one pymongo bulk_write) with
#    more matching single-document updates than the pool holds (sqlite: 100 per
#    database; postgresql: pool_max_conns, default 50) then waits forever, and
#    that database stops answering until FerretDB restarts.
# 2. internal/handler/common/aggregations/stages/group.go hands one shared
#    iterator to all accumulators of a group, so in
#    {$group: {_id: .., n: {$sum: 1}, tot: {$sum: "$x"}}} only the first
#    accumulator sees the documents and every later one silently returns 0.
# 3. internal/backends/sqlite/metadata/metadata.go addresses _id as
#    ->'$._id' while every _id index is built on ->"_id"; SQLite matches index
#    expressions by their text, so each _id lookup, per-document UPDATE and
#    DELETE scanned the whole table (update_many on 10k docs: ~1 min).
# 4. internal/backends/sqlite/collection.go pushes a filter down to the _id
#    index only when it is exactly {_id: <string or ObjectID>}: {_id: {$in: [...]}}
#    and {_id: x, <other conditions>} read every row of the table. The copy
#    gets idPushdown (id_pushdown.go.in, next to this script), which narrows both
#    to their _id rows; the handler still applies the whole filter to each row.
# 5. internal/util/resource/resource.go records every tracked object (each
#    document iterator, query iterator, transaction...) in a pprof profile, which
#    captures the caller's stack: ~10 % of the CPU of an update. Only debug builds
#    do now; the finalizer that reports a leaked object stays.
# 6. internal/util/fsql/{db,tx}.go format each SQL statement's debug log line,
#    arguments included (the whole document of an UPDATE, quoted), whatever the
#    log level: now only when debug logging is on.
# 7. internal/handler/msg_update.go runs every statement of an `update` command
#    (one pymongo bulk_write of up to 50 here) in a SQLite transaction of its own:
#    a BEGIN, an UPDATE and a COMMIT that writes every changed page to the WAL. The
#    changed documents are now written together, in one transaction per command
#    (update_batch.go.in, next to this script, says when a statement needs the
#    writes before it first); the command still answers only once they are stored.
# 8. internal/backends/sqlite/metadata/pool/pool.go drops a database by removing
#    its file but not its -wal and -shm files. A database created again under the
#    same name (a client still writing to it, a test's name used twice) then opens
#    beside the old write-ahead log: the server died of SIGBUS in SQLite's WAL
#    index at the end of a soak, and would not start again ("no such table:
#    _ferretdb_collections") until the files were removed by hand. Both go now.
# 9. internal/handler/commands.go has no `endSessions`, which pymongo sends each
#    time a client closes (every Airflow task, console and status read). Each
#    refusal was logged at WARN with the whole wire message: a few times a minute
#    in a running lab. It answers ok now (end_sessions.go.in): FerretDB keeps no
#    sessions to end.
#
# A plain `go build .` in this directory also works (unpatched upstream code).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/.lab/bin/ferretdb}
mod=github.com/FerretDB/FerretDB
ver=v1.24.2
srcdir=${FERRETDB_SRC_DIR:-$repo/.lab/build/ferretdb-$ver}

# One build at a time: two (say `task infra-up` and a test's spare server) would remove and
# copy the same folder under each other.
mkdir -p "$(dirname "$srcdir")"
exec 9>"$srcdir.lock"
flock 9

cd "$here"
go mod download "$mod"
orig=$(go list -m -f '{{.Dir}}' "$mod")
[ "$(go list -m -f '{{.Version}}' "$mod")" = "$ver" ] || { echo "build.sh: go.mod must require $mod $ver" >&2; exit 1; }

# fresh patched copy (module cache files are read-only)
rm -rf "$srcdir"
mkdir -p "$srcdir"
cp -R "$orig/." "$srcdir/"
chmod -R u+w "$srcdir"

# apply_fix FILE SHA256 MARKER-COUNT SED-ARGS...: check the pristine file, edit the copy
apply_fix() {
	local rel=$1 want=$2 count=$3
	shift 3
	local got
	got=$(sha256sum "$orig/$rel" | cut -d' ' -f1)
	[ "$got" = "$want" ] || { echo "build.sh: unexpected $rel (sha256 $got)" >&2; exit 1; }
	sed "$@" "$orig/$rel" >"$srcdir/$rel"
	[ "$(grep -c 'eventlab patch' "$srcdir/$rel")" = "$count" ] || { echo "build.sh: patching $rel failed" >&2; exit 1; }
}

# 1. update: close each statement's read iterator right away, not at command end
# 7. update: write what the command's statements changed in one transaction
#    (update_batch.go.in, next to this script, says when a statement needs the
#    writes before it first)
apply_fix internal/handler/msg_update.go 8758eeae40c6b02df7313ab10558a391adb86d2ede3fe480f7d8d5ef651ac096 4 \
	-e '/^\t\tdefer closer.Close()$/d' \
	-e 's/^\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)$/\t\tresult, err := common.UpdateDocument(ctx, writes.collection(c), "update", iter, \&u)\n\t\tcloser.Close() \/\/ eventlab patch: release the connection per statement/' \
	-e 's/^\tfor _, u := range params.Updates {$/\twrites := newDeferredUpdates() \/\/ eventlab patch: one transaction a command\n\tdefer writes.flushQuietly(ctx)\n\n&/' \
	-e 's/^\t\tres, err := c.Query(ctx, &qp)$/\t\tif err = writes.flushBefore(ctx, u.Filter); err != nil { \/\/ eventlab patch\n\t\t\treturn 0, 0, nil, lazyerrors.Error(err)\n\t\t}\n\n&/' \
	-e 's/^\treturn matched, modified, &upserted, nil$/\tif err = writes.flush(ctx); err != nil { \/\/ eventlab patch\n\t\treturn 0, 0, nil, lazyerrors.Error(err)\n\t}\n\n&/'
cp "$here/update_batch.go.in" "$srcdir/internal/handler/eventlab_update_batch.go"

# 2. $group: give every accumulator its own iterator over the group's documents
apply_fix internal/handler/common/aggregations/stages/group.go e599f6be866fed71abe940d997404982615b6bca6ae34c307128c496992235ea 1 \
	-e '/^\t\tgroupIter := iterator.Values(iterator.ForSlice(groupedDocument.documents))$/d' \
	-e '/^\t\tdefer groupIter.Close()$/d' \
	-e 's/^\t\t\tout, err := accumulation.accumulator.Accumulate(groupIter)$/\t\t\tgroupIter := iterator.Values(iterator.ForSlice(groupedDocument.documents)) \/\/ eventlab patch\n&\n\t\t\tgroupIter.Close()/'

# 3. sqlite: look documents up by _id with the same expression the _id index is
#    built on (->'_id'; upstream uses ->'$._id', which SQLite does not match to
#    the index), so _id finds, updates and deletes stop scanning the whole table
apply_fix internal/backends/sqlite/metadata/metadata.go 2a831ed534120b6adf5c819fbfc002894efe54ee03490d8526b977653e73c527 1 \
	-e "s/^\tIDColumn = DefaultColumn + \"->'\\\$._id'\"\$/\tIDColumn = DefaultColumn + \"->'_id'\" \/\/ eventlab patch: match the _id index/"

# 4. sqlite: push _id equality and _id $in down to the _id index, whatever else
#    the filter says (queries, updates and deletes all go through Query)
#    in Query, then in Explain (which then reports the filter as pushed down)
apply_fix internal/backends/sqlite/collection.go 7b65c249d047b4ec47d1e6833e945ac7d2613ab2ca3032c64ee526311bd04177 2 \
	-e '0,/^\tif params.Filter.Len() == 1 {$/s//\tif where, pushed, ok := idPushdown(params.Filter); ok { \/\/ eventlab patch\n\t\twhereClause, args = where, pushed\n\t} else if params.Filter.Len() == 1 {/' \
	-e '0,/^\tif params.Filter.Len() == 1 {$/s//\tif where, pushed, ok := idPushdown(params.Filter); ok { \/\/ eventlab patch\n\t\tfilterPushdown, whereClause, args = true, where, pushed\n\t} else if params.Filter.Len() == 1 {/'
cp "$here/id_pushdown.go.in" "$srcdir/internal/backends/sqlite/eventlab_id_pushdown.go"

# 5. resource tracking: record each tracked object (every document iterator, query
#    iterator, transaction...) in a pprof profile, which captures the caller's stack,
#    only in debug builds; the finalizer that catches a leaked object stays
apply_fix internal/util/resource/resource.go 0d9f95cef87362b4670eaac8884601170987118ef4cdd3acefc52ef454e30364 2 \
	-e 's/^\tp.Add(token, 1)$/\tif debugbuild.Enabled { \/\/ eventlab patch: no stack capture per object in release builds\n\t&\n\t}/' \
	-e 's/^\tp.Remove(token)$/\tif debugbuild.Enabled { \/\/ eventlab patch\n\t&\n\t}/'

# 6. SQL logging: build each statement's debug line (its arguments, a whole document
#    for an insert or update, quoted into text) only when debug logging is on
for f in db.go:e2f41698e31936d22764ac57403181cce666072751846454401558017db8068f tx.go:a0bc377f9366de7cecb3b2ad1a07a53fcaa40df1afb49794db5da92f89564d07; do
	apply_fix "internal/util/fsql/${f%%:*}" "${f#*:}" 6 \
		-e 's/^\t\(db\|tx\)\.l\.With(fields\.\.\.)\.DebugContext(\(.*\))$/\tif \1.l.Enabled(ctx, slog.LevelDebug) { \/\/ eventlab patch\n\t&\n\t}/'
done

# 8. dropDatabase: remove the database's -wal and -shm files with it
apply_fix internal/backends/sqlite/metadata/pool/pool.go d316794dac598516292cc87837a7e7e4e6c03a3afcf7cacfbb4c2a5faefd3fbf 1 \
	-e 's/^\tif f := p.databaseFile(name); f != "" {$/&\n\t\tfor _, side := range []string{f + "-wal", f + "-shm"} { \/\/ eventlab patch: a database created again under this name would read them\n\t\t\t_ = os.Remove(side)\n\t\t}\n/'

# 9. endSessions: answer ok (no sessions are kept), instead of a logged refusal
apply_fix internal/handler/commands.go f1cd284cc1b6e613714f6d42cd3ec99ace3d5c32c50897206001185993a7fa31 1 \
	-e 's/^\t\t"killCursors": {$/\t\t"endSessions": { \/\/ eventlab patch: drivers send it when a client closes\n\t\t\tHandler: h.MsgEndSessions,\n\t\t\tHelp:    "Ends sessions (FerretDB keeps none).",\n\t\t},\n&/'
cp "$here/end_sessions.go.in" "$srcdir/internal/handler/eventlab_end_sessions.go"

# temporary go.mod/go.sum pair: ours plus the replace directive
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp go.mod "$tmp/go.mod"
cp go.sum "$tmp/go.sum"
go mod edit -modfile="$tmp/go.mod" -replace="$mod@$ver=$srcdir"

mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 go build -modfile="$tmp/go.mod" -trimpath -ldflags='-s -w' -o "$out" .
echo "built $out ($("$out" -version))"
