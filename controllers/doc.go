// Package controllers holds neonvm-controller's reconcilers: one per kind,
// thin (fetch, run phase functions, patch status), with what is specific to
// running VMs in ../neonvm. The reconcilers arrive with the controller issue;
// today the manager serves the API's admission webhooks.
package controllers

// Permissions the manager needs for what it runs today; the reconcilers add
// their own markers next to their code.
// +kubebuilder:rbac:groups=vm.neon.tech,resources=virtualmachines;virtualmachinemigrations,verbs=get;list;watch
// +kubebuilder:rbac:groups="";events.k8s.io,resources=events,verbs=create;patch
