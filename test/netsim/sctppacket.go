package netsim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// SCTP chunk types (RFC 9260 section 3.2) netsim speaks.
const (
	chunkInit    = 1
	chunkInitAck = 2
	chunkAbort   = 6
)

const (
	sctpHeaderLen    = 12
	initChunkLen     = 20
	stateCookieParam = 7
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// sctpPacket is the part of an SCTP packet netsim looks at: the common
// header and the first chunk.
type sctpPacket struct {
	srcPort, dstPort uint16
	vtag             uint32
	chunkType        uint8
	chunkFlags       uint8
	// initiateTag is set for INIT and INIT-ACK chunks.
	initiateTag uint32
}

// marshalSCTP builds a packet of one chunk with a valid CRC32c checksum.
func marshalSCTP(srcPort, dstPort uint16, vtag uint32, chunk []byte) []byte {
	b := make([]byte, sctpHeaderLen+len(chunk))
	binary.BigEndian.PutUint16(b[0:], srcPort)
	binary.BigEndian.PutUint16(b[2:], dstPort)
	binary.BigEndian.PutUint32(b[4:], vtag)
	copy(b[sctpHeaderLen:], chunk)
	// The checksum is CRC32c over the packet with the field zeroed, stored
	// least significant byte first.
	binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b, castagnoli))
	return b
}

// initChunk builds an INIT or INIT-ACK chunk. An INIT-ACK carries a small
// State Cookie parameter, which the protocol requires.
func initChunk(chunkType uint8, initiateTag, tsn uint32) []byte {
	length := initChunkLen
	if chunkType == chunkInitAck {
		length += 8
	}
	c := make([]byte, length)
	c[0] = chunkType
	binary.BigEndian.PutUint16(c[2:], uint16(length))
	binary.BigEndian.PutUint32(c[4:], initiateTag)
	binary.BigEndian.PutUint32(c[8:], 65535) // advertised receiver window
	binary.BigEndian.PutUint16(c[12:], 1)    // outbound streams
	binary.BigEndian.PutUint16(c[14:], 1)    // inbound streams
	binary.BigEndian.PutUint32(c[16:], tsn)
	if chunkType == chunkInitAck {
		binary.BigEndian.PutUint16(c[20:], stateCookieParam)
		binary.BigEndian.PutUint16(c[22:], 8)
		binary.BigEndian.PutUint32(c[24:], initiateTag^tsn)
	}
	return c
}

// abortChunk builds an ABORT chunk without error causes.
func abortChunk() []byte {
	return []byte{chunkAbort, 0, 0, 4}
}

// parseSCTP checks the checksum and decodes the header and first chunk.
func parseSCTP(b []byte) (sctpPacket, error) {
	var p sctpPacket
	if len(b) < sctpHeaderLen+4 {
		return p, fmt.Errorf("sctp packet too short: %d bytes", len(b))
	}
	want := binary.LittleEndian.Uint32(b[8:])
	c := make([]byte, len(b))
	copy(c, b)
	clear(c[8:12])
	if got := crc32.Checksum(c, castagnoli); got != want {
		return p, fmt.Errorf("sctp checksum %#08x, computed %#08x", want, got)
	}
	p.srcPort = binary.BigEndian.Uint16(b[0:])
	p.dstPort = binary.BigEndian.Uint16(b[2:])
	p.vtag = binary.BigEndian.Uint32(b[4:])
	chunk := b[sctpHeaderLen:]
	p.chunkType = chunk[0]
	p.chunkFlags = chunk[1]
	length := int(binary.BigEndian.Uint16(chunk[2:]))
	if length < 4 || length > len(chunk) {
		return p, fmt.Errorf("sctp chunk length %d out of range", length)
	}
	if p.chunkType == chunkInit || p.chunkType == chunkInitAck {
		if length < initChunkLen {
			return p, errors.New("sctp INIT chunk too short")
		}
		p.initiateTag = binary.BigEndian.Uint32(chunk[4:])
	}
	return p, nil
}
