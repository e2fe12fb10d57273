package agentproc

import (
	"fmt"
	"iter"
	"math"
	"sort"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of an agent's /metrics, parsed by expfmt: every
// sample by its series, and the histograms for quantiles.
type Metrics struct {
	samples map[string]float64
	fams    map[string]*dto.MetricFamily
}

// ParseMetrics parses the Prometheus text format.
func ParseMetrics(text string) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return Metrics{}, fmt.Errorf("parse /metrics: %w", err)
	}
	m := Metrics{samples: map[string]float64{}, fams: fams}
	for name, f := range fams {
		for _, s := range f.GetMetric() {
			labels := s.GetLabel()
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				m.samples[seriesKey(name, labels)] = s.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				m.samples[seriesKey(name, labels)] = s.GetGauge().GetValue()
			case dto.MetricType_UNTYPED:
				m.samples[seriesKey(name, labels)] = s.GetUntyped().GetValue()
			case dto.MetricType_HISTOGRAM:
				h := s.GetHistogram()
				m.samples[seriesKey(name+"_count", labels)] = float64(h.GetSampleCount())
				m.samples[seriesKey(name+"_sum", labels)] = h.GetSampleSum()
				for _, b := range h.GetBucket() {
					m.samples[seriesKey(name+"_bucket", labels, "le", formatFloat(b.GetUpperBound()))] = float64(b.GetCumulativeCount())
				}
				m.samples[seriesKey(name+"_bucket", labels, "le", "+Inf")] = float64(h.GetSampleCount())
			case dto.MetricType_SUMMARY:
				q := s.GetSummary()
				m.samples[seriesKey(name+"_count", labels)] = float64(q.GetSampleCount())
				m.samples[seriesKey(name+"_sum", labels)] = q.GetSampleSum()
				for _, v := range q.GetQuantile() {
					m.samples[seriesKey(name, labels, "quantile", formatFloat(v.GetQuantile()))] = v.GetValue()
				}
			}
		}
	}
	return m, nil
}

func formatFloat(f float64) string {
	if math.IsInf(f, 1) {
		return "+Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// seriesKey is a series' name and labels in one canonical form: labels
// sorted by name, values quoted, a label with an empty value left out (to
// Prometheus it is no label). extra is one more label (name, value).
func seriesKey(name string, labels []*dto.LabelPair, extra ...string) string {
	pairs := make([][2]string, 0, len(labels)+1)
	for _, l := range labels {
		if l.GetValue() != "" {
			pairs = append(pairs, [2]string{l.GetName(), l.GetValue()})
		}
	}
	if len(extra) == 2 {
		pairs = append(pairs, [2]string{extra[0], extra[1]})
	}
	if len(pairs) == 0 {
		return name
	}
	sort.Slice(pairs, func(i, j int) bool { return pairs[i][0] < pairs[j][0] })
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p[0])
		b.WriteByte('=')
		b.WriteString(strconv.Quote(p[1]))
	}
	b.WriteByte('}')
	return b.String()
}

// parseSeries reads a series as the text format writes it
// (`name{label="value",...}`), with expfmt, into its name and labels.
func parseSeries(series string) (string, []*dto.LabelPair, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(series + " 0\n"))
	if err != nil {
		return "", nil, fmt.Errorf("series %s: %w", series, err)
	}
	for name, f := range fams {
		if ms := f.GetMetric(); len(ms) == 1 {
			return name, ms[0].GetLabel(), nil
		}
	}
	return "", nil, fmt.Errorf("series %s: not one series", series)
}

// Value is the value of one series, written as the text format does
// (`overtime_kills_total{result="ok",rule="x",signal="SIGKILL"}`, any
// label order), a histogram's _bucket, _sum and _count series included.
// ok is false when the scrape has no such series. A series that cannot be
// parsed is never there.
func (m Metrics) Value(series string) (v float64, ok bool) {
	name, labels, err := parseSeries(series)
	if err != nil {
		return 0, false
	}
	v, ok = m.samples[seriesKey(name, labels)]
	return v, ok
}

// Get is Value, 0 when absent (a counter never incremented).
func (m Metrics) Get(series string) float64 {
	v, _ := m.Value(series)
	return v
}

// Len is how many series the scrape has.
func (m Metrics) Len() int { return len(m.samples) }

// All yields every series (labels sorted by name, empty ones left out)
// and its value.
func (m Metrics) All() iter.Seq2[string, float64] {
	return func(yield func(string, float64) bool) {
		for k, v := range m.samples {
			if !yield(k, v) {
				return
			}
		}
	}
}

// Quantile estimates the q-quantile of histogram name the way Prometheus's
// histogram_quantile does: linear within the bucket it falls in. sel is
// the histogram's labels without le (`rule="x"`, "" for none). ok is false
// without such a histogram or with no observation in it.
func (m Metrics) Quantile(name, sel string, q float64) (float64, bool) {
	f, found := m.fams[name]
	if !found || f.GetType() != dto.MetricType_HISTOGRAM {
		return 0, false
	}
	want := name
	if sel != "" {
		want = name + "{" + sel + "}"
	}
	wname, wlabels, err := parseSeries(want)
	if err != nil {
		return 0, false
	}
	key := seriesKey(wname, wlabels)
	for _, s := range f.GetMetric() {
		if seriesKey(name, s.GetLabel()) != key {
			continue
		}
		h := s.GetHistogram()
		type bucket struct{ le, n float64 }
		var bs []bucket
		for _, b := range h.GetBucket() {
			bs = append(bs, bucket{b.GetUpperBound(), float64(b.GetCumulativeCount())})
		}
		if len(bs) == 0 || !math.IsInf(bs[len(bs)-1].le, 1) {
			bs = append(bs, bucket{math.Inf(1), float64(h.GetSampleCount())})
		}
		sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
		if bs[len(bs)-1].n == 0 {
			return 0, false
		}
		rank := q * bs[len(bs)-1].n
		lo, below := 0.0, 0.0
		for _, b := range bs {
			if b.n >= rank {
				if math.IsInf(b.le, 1) {
					return lo, true
				}
				if b.n == below {
					return b.le, true
				}
				return lo + (b.le-lo)*(rank-below)/(b.n-below), true
			}
			lo, below = b.le, b.n
		}
		return lo, true
	}
	return 0, false
}
