package dataplane

import (
	"context"
	"fmt"

	"sigs.k8s.io/knftables"
)

// probeChain is a regular chain that exists only inside the dry-run
// transactions of DetectMode; nothing is ever committed.
const probeChain = "queue-probe"

// DetectMode asks the kernel, with dry-run transactions (nft --check), whether
// it accepts the native queue statement. `nft --check` sends the batch to the
// kernel and aborts it, so a kernel without nft_queue rejects the rule
// ("No such file or directory"). A control transaction without the queue rule
// tells a missing expression apart from nft not working at all.
func DetectMode(ctx context.Context, nft knftables.Interface, queue uint16) (Mode, error) {
	probe := func(withQueue bool) error {
		tx := nft.NewTransaction()
		tx.Add(&knftables.Table{})
		tx.Add(&knftables.Chain{Name: probeChain})
		tx.Add(&knftables.Rule{Chain: probeChain, Rule: "counter"})
		if withQueue {
			tx.Add(&knftables.Rule{Chain: probeChain, Rule: fmt.Sprintf("queue num %d bypass", queue)})
		}
		return nft.Check(ctx, tx)
	}
	if err := probe(false); err != nil {
		return "", fmt.Errorf("dataplane: nftables dry run failed: %w", err)
	}
	if err := probe(true); err != nil {
		return ModeXT, nil
	}
	return ModeNFT, nil
}

// chooseMode resolves cfg.QueueMode; detected says whether the kernel was
// probed.
func chooseMode(ctx context.Context, cfg Config, nft knftables.Interface) (mode Mode, detected bool, err error) {
	switch cfg.QueueMode {
	case string(ModeNFT):
		return ModeNFT, false, nil
	case string(ModeXT):
		return ModeXT, false, nil
	}
	mode, err = DetectMode(ctx, nft, cfg.FirstQueue)
	if err != nil {
		return "", true, err
	}
	return mode, true, nil
}
