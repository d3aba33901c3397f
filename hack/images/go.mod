// vmscale's image builder: OCI images for the project's binaries without a
// Docker engine. A module of its own so go-containerregistry's dependencies
// never move the main module's Kubernetes graph.
module github.com/vmscale/vmscale/hack/images

go 1.26.0

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
)
