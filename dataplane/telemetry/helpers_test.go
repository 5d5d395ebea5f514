package telemetry

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// series is one gathered metric: its labels and value.
type series struct {
	labels map[string]string
	value  float64
}

// gather returns the series of one metric family of m's registry, nil if it has none.
func gather(t testing.TB, m *Metrics, name string) []series {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		var out []series
		for _, metric := range f.GetMetric() {
			s := series{labels: map[string]string{}, value: value(f.GetType(), metric)}
			for _, l := range metric.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			out = append(out, s)
		}
		return out
	}
	return nil
}

func value(typ dto.MetricType, m *dto.Metric) float64 {
	switch typ {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	default:
		return m.GetUntyped().GetValue()
	}
}
