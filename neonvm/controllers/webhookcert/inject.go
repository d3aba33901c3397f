package webhookcert

import (
	"bytes"
	"context"
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
)

// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations;validatingwebhookconfigurations,verbs=get;list;watch;update;patch

// Injector writes a CA into the caBundle of named webhook configurations, and
// keeps it there: it runs until its context ends, re-checking every Interval
// so a configuration re-applied without a caBundle heals.
type Injector struct {
	Client client.Client
	CAPEM  []byte
	// Configurations are MutatingWebhookConfiguration or
	// ValidatingWebhookConfiguration names; a name is looked up as both.
	Configurations []string
	Interval       time.Duration
}

// InjectOnce updates every named configuration whose caBundle differs. A
// configuration that does not exist yet is not an error: the next round
// finds it.
func (in *Injector) InjectOnce(ctx context.Context) (updated int, err error) {
	for _, name := range in.Configurations {
		found := false
		for _, cfg := range []webhookConfig{&mutating{}, &validating{}} {
			err := in.Client.Get(ctx, client.ObjectKey{Name: name}, cfg.object())
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return updated, fmt.Errorf("get %s %s: %w", cfg.kind(), name, err)
			}
			found = true
			changed := false
			for _, cc := range cfg.clientConfigs() {
				if !bytes.Equal(cc.CABundle, in.CAPEM) {
					cc.CABundle = in.CAPEM
					changed = true
				}
			}
			if !changed {
				continue
			}
			if err := in.Client.Update(ctx, cfg.object()); err != nil {
				return updated, fmt.Errorf("set caBundle of %s %s: %w", cfg.kind(), name, err)
			}
			updated++
		}
		if !found {
			logf.FromContext(ctx).Info("webhook configuration not found yet; will retry", "configuration", name)
		}
	}
	return updated, nil
}

// webhookConfig is what InjectOnce needs of either kind of configuration.
type webhookConfig interface {
	object() client.Object
	kind() string
	clientConfigs() []*admissionregistrationv1.WebhookClientConfig
}

type mutating struct {
	admissionregistrationv1.MutatingWebhookConfiguration
}

func (m *mutating) object() client.Object { return &m.MutatingWebhookConfiguration }
func (m *mutating) kind() string          { return "MutatingWebhookConfiguration" }
func (m *mutating) clientConfigs() []*admissionregistrationv1.WebhookClientConfig {
	out := make([]*admissionregistrationv1.WebhookClientConfig, len(m.Webhooks))
	for i := range m.Webhooks {
		out[i] = &m.Webhooks[i].ClientConfig
	}
	return out
}

type validating struct {
	admissionregistrationv1.ValidatingWebhookConfiguration
}

func (v *validating) object() client.Object { return &v.ValidatingWebhookConfiguration }
func (v *validating) kind() string          { return "ValidatingWebhookConfiguration" }
func (v *validating) clientConfigs() []*admissionregistrationv1.WebhookClientConfig {
	out := make([]*admissionregistrationv1.WebhookClientConfig, len(v.Webhooks))
	for i := range v.Webhooks {
		out[i] = &v.Webhooks[i].ClientConfig
	}
	return out
}

// Start runs InjectOnce now and every Interval until ctx ends. It is a
// controller-runtime Runnable.
func (in *Injector) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithName("webhookcert")
	interval := in.Interval
	if interval <= 0 {
		interval = time.Minute
	}
	for {
		n, err := in.InjectOnce(ctx)
		switch {
		case err != nil:
			log.Error(err, "injecting webhook CA failed; retrying", "retryIn", interval)
		case n > 0:
			log.Info("webhook CA injected", "configurations", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// NeedLeaderElection is false: the replica serving webhooks must inject its
// own CA whether or not it leads. (Self-signed mode is for one replica.)
func (in *Injector) NeedLeaderElection() bool { return false }
