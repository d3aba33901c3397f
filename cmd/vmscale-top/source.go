package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	vmv1 "github.com/vmscale/vmscale/api/v1"
	"github.com/vmscale/vmscale/pkg/agent/scrape"
	"github.com/vmscale/vmscale/pkg/top"
)

const (
	// getTimeout bounds reading one VM from the apiserver.
	getTimeout = 2 * time.Second
	// scrapeTimeout bounds one scrape of a guest's exporter.
	scrapeTimeout = time.Second
	// maxPage caps an exporter's page; it serves a few hundred bytes.
	maxPage = 1 << 20
)

// source reads VMs from the apiserver and their guests' load from the
// exporters.
type source struct {
	c           client.Client
	ns          string
	http        *http.Client
	metricsPort int
}

func newSource(kubeconfig, namespace string, metricsPort int) (*source, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	rest, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	if namespace == "" {
		if namespace, _, err = cc.Namespace(); err != nil {
			return nil, fmt.Errorf("kubeconfig namespace: %w", err)
		}
	}
	scheme := runtime.NewScheme()
	if err := vmv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := client.New(rest, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("apiserver client: %w", err)
	}
	return &source{c: c, ns: namespace, metricsPort: metricsPort,
		http: &http.Client{Timeout: scrapeTimeout, Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 1}}}, nil
}

// sampleAll samples every VM at once, so one slow VM delays none of the
// others by more than its timeouts.
func (s *source) sampleAll(ctx context.Context, names []string, now time.Time) []top.Sample {
	out := make([]top.Sample, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() { out[i] = s.sample(ctx, name, now) })
	}
	wg.Wait()
	return out
}

func (s *source) sample(ctx context.Context, name string, now time.Time) top.Sample {
	gctx, cancel := context.WithTimeout(ctx, getTimeout)
	defer cancel()
	var vm vmv1.VirtualMachine
	if err := s.c.Get(gctx, types.NamespacedName{Namespace: s.ns, Name: name}, &vm); err != nil {
		return top.Failed(name, now, err)
	}
	smp := top.FromVM(&vm, now)
	if vm.Status.PodIP != "" {
		smp.SetLoad(s.load(ctx, vm.Status.PodIP))
	}
	return smp
}

// load scrapes the guest exporter and reads host_load1 as the agent does
// (scrape.ParseSystem): a page the agent would refuse shows as an error.
func (s *source) load(ctx context.Context, podIP string) (float64, error) {
	url := "http://" + net.JoinHostPort(podIP, strconv.Itoa(s.metricsPort)) + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	page, err := io.ReadAll(io.LimitReader(resp.Body, maxPage))
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", url, err)
	}
	m, err := scrape.ParseSystem(page)
	if err != nil {
		return 0, err
	}
	return m.Load1, nil
}
