// Command ferretdb runs FerretDB 1.x (Apache-2.0) as the lab's MongoDB
// stand-in: it speaks the MongoDB wire protocol on a TCP address and keeps its
// data in a directory of SQLite files (default) or in PostgreSQL.
//
// Why this wrapper exists: `go install github.com/FerretDB/FerretDB/cmd/ferretdb`
// builds a binary that panics at start-up, because upstream's cmd/ expects
// generated files (build/version/version.txt, ...) that are not part of the
// module zip served by the Go module proxy. The public embeddable package
// github.com/FerretDB/FerretDB/ferretdb does not need those files, so this
// small main drives FerretDB through it instead. We never build or ship
// MongoDB itself (SSPL).
//
// Build with `bash infra/ferretdb/build.sh [OUT]` (static, CGO_ENABLED=0, and
// with upstream bug fixes applied; see that script). A plain
// `go build .` here also works but gives the unpatched upstream behaviour.
//
// Configuration: every flag can also be given as an environment variable
// (flags win):
//
//	-listen-addr     FERRETDB_LISTEN_ADDR     default 127.0.0.1:27017
//	-handler         FERRETDB_HANDLER         sqlite | postgresql (default sqlite)
//	-sqlite-url      FERRETDB_SQLITE_URL      state dir or file: URI (default .lab/ferretdb)
//	-postgresql-url  FERRETDB_POSTGRESQL_URL  default postgres://127.0.0.1:5432/ferretdb
//	-log-level       FERRETDB_LOG_LEVEL       debug | info | warn | error (default warn)
//	-debug-addr      FERRETDB_DEBUG_ADDR      Go's pprof over HTTP on this address (default off);
//	                                          `go tool pprof http://ADDR/debug/pprof/profile?seconds=20`
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // on -debug-addr only: the handlers go to http.DefaultServeMux
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/FerretDB/FerretDB/build/version"
	"github.com/FerretDB/FerretDB/ferretdb"
)

const ferretModule = "github.com/FerretDB/FerretDB"

// envOr returns the value of the environment variable key, or def when unset or empty.
func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// sqliteURI turns a plain directory path into the "file:/abs/dir/" URI FerretDB
// wants (creating the directory); a value that already starts with "file:" is
// passed through unchanged, so SQLite URI parameters such as _pragma still work.
func sqliteURI(v string) (string, error) {
	if strings.HasPrefix(v, "file:") {
		return v, nil
	}
	dir, err := filepath.Abs(v)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return "file:" + filepath.ToSlash(dir) + "/", nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

// reportVersion fills in the FerretDB version reported by buildInfo/serverStatus,
// which is "unknown" in embedded builds, from the module version linked in.
func reportVersion() {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	for _, dep := range bi.Deps {
		if dep.Path == ferretModule {
			v := dep.Version
			if dep.Replace != nil { // build.sh builds a patched local copy
				v += "+eventlab.patched"
			}
			version.Get().Version = v
			return
		}
	}
}

func run() error {
	listenAddr := flag.String("listen-addr", envOr("FERRETDB_LISTEN_ADDR", "127.0.0.1:27017"),
		"TCP address for the MongoDB wire protocol")
	handler := flag.String("handler", envOr("FERRETDB_HANDLER", "sqlite"),
		"backend handler: sqlite or postgresql")
	sqliteURL := flag.String("sqlite-url", envOr("FERRETDB_SQLITE_URL", ".lab/ferretdb"),
		`sqlite handler: state directory (created if missing) or "file:/dir/" URI`)
	postgresqlURL := flag.String("postgresql-url", envOr("FERRETDB_POSTGRESQL_URL", "postgres://127.0.0.1:5432/ferretdb"),
		"postgresql handler: connection string (the database must exist)")
	logLevel := flag.String("log-level", envOr("FERRETDB_LOG_LEVEL", "warn"),
		"log level: debug, info, warn or error")
	debugAddr := flag.String("debug-addr", envOr("FERRETDB_DEBUG_ADDR", ""),
		"serve Go's pprof handlers (/debug/pprof/) over HTTP on this address; empty: off")
	showVersion := flag.Bool("version", false, "print the FerretDB version and exit")
	flag.Parse()

	reportVersion()
	if *showVersion {
		fmt.Printf("ferretdb %s (embedded, MongoDB %s compatible)\n", version.Get().Version, version.Get().MongoDBVersion)
		return nil
	}

	level, err := parseLevel(*logLevel)
	if err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)

	cfg := &ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: *listenAddr},
		Logger:   logger,
		Handler:  *handler,
	}
	switch *handler {
	case "sqlite":
		if cfg.SQLiteURL, err = sqliteURI(*sqliteURL); err != nil {
			return fmt.Errorf("-sqlite-url: %w", err)
		}
	case "postgresql":
		cfg.PostgreSQLURL = *postgresqlURL
	default:
		return fmt.Errorf("-handler: want sqlite or postgresql, got %q", *handler)
	}

	if *debugAddr != "" {
		go func() {
			// A profiling aid: a failure to listen is logged, and FerretDB runs on without it.
			logger.Error("debug handler stopped", "addr", *debugAddr, "error", http.ListenAndServe(*debugAddr, nil))
		}()
	}

	f, err := ferretdb.New(cfg)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logger.Warn("ferretdb starting", "version", version.Get().Version, "listen", *listenAddr,
		"handler", *handler, "sqlite", cfg.SQLiteURL, "postgresql", cfg.PostgreSQLURL != "")

	if err := f.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ferretdb:", err)
		os.Exit(1)
	}
}
