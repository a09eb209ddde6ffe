package main

import "testing"

func TestDifference(t *testing.T) {
	tests := []struct{ a, b, want string }{
		{"x\ny", "x\ny", ""},
		{"x\ny", "x", "- y"},
		{"x", "x\nz", "+ z"},
		{"== s\nr1\nr1", "== s\nr1\nr2", "- r1\n+ r2"},
	}
	for _, tt := range tests {
		if got := difference(tt.a, tt.b); got != tt.want {
			t.Errorf("difference(%q, %q) = %q, want %q", tt.a, tt.b, got, tt.want)
		}
	}
}
