//! kube-lite: an in-memory Kubernetes API server for the local stack and the tests.
#![forbid(unsafe_code)]
