package netsim

import (
	"hash/crc32"
	"testing"
)

func TestCRC32cVector(t *testing.T) {
	// RFC 3720 B.4 check value of CRC32c over "123456789".
	if got := crc32.Checksum([]byte("123456789"), castagnoli); got != 0xe3069283 {
		t.Fatalf("crc32c = %#x, want 0xe3069283", got)
	}
}

func TestSCTPPacketRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		vtag  uint32
		chunk []byte
		want  sctpPacket
	}{
		{
			name:  "init",
			chunk: initChunk(chunkInit, 0xdeadbeef, 7),
			want:  sctpPacket{srcPort: 40000, dstPort: 80, chunkType: chunkInit, initiateTag: 0xdeadbeef},
		},
		{
			name:  "init-ack",
			vtag:  0xdeadbeef,
			chunk: initChunk(chunkInitAck, 0x01020304, 9),
			want:  sctpPacket{srcPort: 40000, dstPort: 80, vtag: 0xdeadbeef, chunkType: chunkInitAck, initiateTag: 0x01020304},
		},
		{
			name:  "abort",
			vtag:  42,
			chunk: abortChunk(),
			want:  sctpPacket{srcPort: 40000, dstPort: 80, vtag: 42, chunkType: chunkAbort},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := marshalSCTP(40000, 80, tt.vtag, tt.chunk)
			got, err := parseSCTP(b)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("parsed %+v, want %+v", got, tt.want)
			}
			corrupt := append([]byte(nil), b...)
			corrupt[len(corrupt)-1] ^= 0xff
			if _, err := parseSCTP(corrupt); err == nil {
				t.Error("corrupted packet parsed without error")
			}
			if _, err := parseSCTP(b[:sctpHeaderLen+2]); err == nil {
				t.Error("truncated packet parsed without error")
			}
		})
	}
}

func TestParseSCTPBadChunkLength(t *testing.T) {
	// A chunk claiming more bytes than the packet holds.
	b := marshalSCTP(1, 2, 3, []byte{chunkInit, 0, 0, 200, 0, 0, 0, 0})
	if _, err := parseSCTP(b); err == nil {
		t.Error("chunk longer than packet parsed without error")
	}
}
