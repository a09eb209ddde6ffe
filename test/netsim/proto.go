package netsim

import "fmt"

// Proto is a transport protocol a probe or server speaks.
type Proto string

// The protocols netsim can serve and probe.
const (
	TCP  Proto = "tcp"
	UDP  Proto = "udp"
	SCTP Proto = "sctp"
)

// nftName is the protocol's name in nft rules.
func (p Proto) nftName() (string, error) {
	switch p {
	case TCP, UDP, SCTP:
		return string(p), nil
	}
	return "", fmt.Errorf("unknown protocol %q", p)
}
