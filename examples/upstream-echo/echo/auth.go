package echo

import (
	"context"
	"encoding/base64"

	"google.golang.org/grpc/credentials"
)

// BasicAuth returns per-RPC credentials sending "authorization: Basic
// base64(key:secret)" with every call, as the Herald api expects of an
// app's services. requireTLS false lets them travel over a plaintext
// connection (a local api); use TLS in production.
func BasicAuth(key, secret string, requireTLS bool) credentials.PerRPCCredentials {
	return basicAuth{value: "Basic " + base64.StdEncoding.EncodeToString([]byte(key+":"+secret)), tls: requireTLS}
}

type basicAuth struct {
	value string
	tls   bool
}

func (b basicAuth) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": b.value}, nil
}

func (b basicAuth) RequireTransportSecurity() bool { return b.tls }
