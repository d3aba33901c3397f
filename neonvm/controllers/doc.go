// Package controllers holds neonvm-controller's reconcilers: one per kind,
// thin (fetch, run phase functions, patch status), with what is specific to
// running VMs in ../neonvm (the runner pod, QMP, the runner API) and the
// decisions as pure functions (vmstate.go).
package controllers

// Permissions the manager needs beyond each reconciler's own markers.
// +kubebuilder:rbac:groups=vm.neon.tech,resources=virtualmachines;virtualmachinemigrations,verbs=get;list;watch
// +kubebuilder:rbac:groups="";events.k8s.io,resources=events,verbs=create;patch
