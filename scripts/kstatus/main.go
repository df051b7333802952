// kstatus reads Kubernetes objects as JSON, one per line, from stdin and prints for each the
// status Flux, kpt and `kubectl wait`-style tools compute with sigs.k8s.io/cli-utils' kstatus
// library: "<status>\t<message>". The GitOps health test runs it on live VaultKeys and
// SpendPolicies, so what it checks is what Flux itself reads (docs/gitops.md).
package main

import (
	"bufio"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	for in.Scan() {
		// Unstructured's own decoding keeps integers as int64, as kstatus expects.
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(in.Bytes()); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: not a Kubernetes object: %v\n", err)
			os.Exit(2)
		}
		res, err := status.Compute(obj)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
			os.Exit(1)
		}
		fmt.Printf("%s\t%s\n", res.Status, res.Message)
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: reading stdin: %v\n", err)
		os.Exit(2)
	}
}
