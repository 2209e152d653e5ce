// Command openapi-pb converts an OpenAPI v2 JSON document (stdin) into the protobuf form
// kube-apiserver serves for Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf.
package main

import (
	"io"
	"os"

	openapi_v2 "github.com/google/gnostic-models/openapiv2"
	"google.golang.org/protobuf/proto"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		panic(err)
	}
	doc, err := openapi_v2.ParseDocument(data)
	if err != nil {
		panic(err)
	}
	out, err := proto.MarshalOptions{Deterministic: true}.Marshal(doc)
	if err != nil {
		panic(err)
	}
	if _, err := os.Stdout.Write(out); err != nil {
		panic(err)
	}
}
