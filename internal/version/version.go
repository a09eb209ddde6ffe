// Package version holds the build's version, set by the linker:
// -X github.com/tollgate/tollgate/internal/version.Version=v1.2.3
package version

// Version is the release or git description of the build; "dev" when built
// without the Makefile.
var Version = "dev"
