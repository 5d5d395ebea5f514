package kubetest

import (
	"context"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestTokenRequestAndReview shows that the test API server issues and verifies audience-bound
// service-account tokens, which the CA relies on.
func TestTokenRequestAndReview(t *testing.T) {
	env, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = env.Stop() }()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ctx := context.Background()
	if _, err := cs.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "sleep"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, "sleep", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"ambient-ca"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		audience string
		want     bool
	}{{"ambient-ca", true}, {"other", false}} {
		rev, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: tr.Status.Token, Audiences: []string{tc.audience}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rev.Status.Authenticated != tc.want {
			t.Fatalf("audience %s: authenticated=%v, want %v (%s)", tc.audience, rev.Status.Authenticated, tc.want, rev.Status.Error)
		}
		if tc.want && rev.Status.User.Username != "system:serviceaccount:default:sleep" {
			t.Fatalf("user %q", rev.Status.User.Username)
		}
	}
}
