// Package examples embeds the example cluster and policies (cluster.yaml,
// policies.yaml) so that the demo and tests can use them without knowing
// where the repository is. README.md lists the verdicts they must produce.
package examples

import "embed"

// FS holds cluster.yaml and policies.yaml.
//
//go:embed cluster.yaml policies.yaml
var FS embed.FS
