// Package grid prints who-reaches-whom tables: one row per source, one
// column per destination, '.' where the connection is allowed and 'X' where
// it is denied. The demo prints probed connections with it and decider
// explain computed ones.
package grid

import (
	"fmt"
	"io"
	"strings"
)

// Legend explains the marks of Write's grids.
const Legend = "rows: from, columns: to; '.' allowed, 'X' denied"

// Write prints the legend and a square grid whose rows and columns are
// labels; allowed(i, j) says whether row i reaches column j.
func Write(w io.Writer, labels []string, allowed func(from, to int) bool) error {
	width := 3
	for _, l := range labels {
		width = max(width, len(l))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "  %s\n\n", Legend)
	cells := make([]string, len(labels)+1)
	row := func() {
		b.WriteString(strings.TrimRight(strings.Join(cells, " "), " ") + "\n")
	}
	cells[0] = strings.Repeat(" ", width+2)
	for j, l := range labels {
		cells[j+1] = fmt.Sprintf("%-*s", width+2, l)
	}
	row()
	for i, l := range labels {
		cells[0] = fmt.Sprintf("%*s", width+2, l)
		for j := range labels {
			mark := "."
			if !allowed(i, j) {
				mark = "X"
			}
			// The mark stands under the middle of its column's label.
			cells[j+1] = fmt.Sprintf("%-*s", width+2, strings.Repeat(" ", (len(labels[j])-1)/2)+mark)
		}
		row()
	}
	_, err := io.WriteString(w, b.String())
	return err
}
