package bench

import (
	"slices"
	"time"
)

// Percentile returns the p-th percentile (nearest rank) of samples, which it sorts; zero if empty.
func Percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	slices.Sort(samples)
	rank := int(p/100*float64(len(samples))+0.999999) - 1
	return samples[min(max(rank, 0), len(samples)-1)]
}

// Mean returns the mean of samples; zero if empty.
func Mean(samples []time.Duration) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	return sum / time.Duration(len(samples))
}

// Median returns the median of vs (the mean of the two middle values for an even count); zero if
// empty. vs is not modified.
func Median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
