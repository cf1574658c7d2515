// Command flowfollow is a minimal grpc-go client of the Hubble Observer API (service observer.Observer).
//
// It exists for two reasons: to prove that a Go client built on grpc-go (what the real `hubble` CLI uses)
// talks to meshagent's server, and to be a following client fast enough for throughput benchmarks
// (Python grpcio clients top out near 13k messages/s; this one decodes only a handful of fields).
//
// No generated protobuf code is used: requests are encoded and responses scanned with protowire through
// a pass-through codec, so the program builds from Debian's packages alone (GOPATH mode, no module proxy).
// Field numbers come from proto/observer/observer.proto and proto/flow/flow.proto.
//
// Usage:
//
//	flowfollow getflows --addr ADDR [--follow] [--number N] [--first] [--stop-at-dport P]
//	                    [--tls-ca F [--tls-cert F --tls-key F] [--server-name S]] [--timeout S] [--bad-filter]
//	flowfollow status   --addr ADDR [TLS and --timeout flags as above]
//
// ADDR is unix:///path/to.sock or host:port. Output: see printResult and runStatus.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	methodGetFlows     = "/observer.Observer/GetFlows"
	methodServerStatus = "/observer.Observer/ServerStatus"

	// Bigger than grpc-go's 64 KiB defaults so a fast stream is not throttled by window updates.
	windowBytes = 4 << 20
)

// rawCodec hands message bytes through untouched: the program encodes and decodes them itself.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*b = data
	return nil
}

// Name is "proto" so the content-type stays the ordinary application/grpc(+proto) that servers expect.
func (rawCodec) Name() string { return "proto" }

type connFlags struct {
	addr       string
	tlsCA      string
	tlsCert    string
	tlsKey     string
	serverName string
	timeout    float64
}

func (c *connFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", "", "unix:///path/to.sock or host:port (required)")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "CA bundle: use TLS and verify the server against it")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "client certificate (mutual TLS)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "client key (mutual TLS)")
	fs.StringVar(&c.serverName, "server-name", "", "name to verify in the server certificate (default: host of --addr)")
	fs.Float64Var(&c.timeout, "timeout", 0, "deadline for the whole call in seconds (0: none)")
}

// dial connects lazily; connection failures surface as UNAVAILABLE on the first call.
func (c *connFlags) dial() (*grpc.ClientConn, error) {
	if c.addr == "" {
		return nil, errors.New("--addr is required")
	}
	opts := []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})),
		grpc.WithInitialWindowSize(windowBytes),
		grpc.WithInitialConnWindowSize(windowBytes),
	}
	target := c.addr
	if path := strings.TrimPrefix(c.addr, "unix://"); path != c.addr {
		// grpc-go 1.33 has no unix resolver: dial the socket ourselves and send the same :authority
		// ("localhost") that grpcio and newer grpc-go use for Unix sockets.
		target = "passthrough:///localhost"
		opts = append(opts,
			grpc.WithAuthority("localhost"),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			}))
	}
	if c.tlsCA == "" {
		if c.tlsCert != "" || c.tlsKey != "" {
			return nil, errors.New("--tls-cert/--tls-key need --tls-ca")
		}
		opts = append(opts, grpc.WithInsecure())
	} else {
		cfg, err := c.tlsConfig()
		if err != nil {
			return nil, err
		}
		// credentials.NewTLS adds ALPN "h2", as every grpc-go client does.
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	}
	return grpc.Dial(target, opts...)
}

func (c *connFlags) tlsConfig() (*tls.Config, error) {
	pem, err := os.ReadFile(c.tlsCA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate found in %s", c.tlsCA)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: c.serverName, MinVersion: tls.VersionTLS12}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if c.tlsCert != "" {
		pair, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// context returns the call's context: the --timeout deadline, and cancelled by SIGINT/SIGTERM so a
// benchmark can stop a follower and still read its counts. stopped reports whether a signal came.
func (c *connFlags) context() (ctx context.Context, cancel context.CancelFunc, stopped func() bool) {
	if c.timeout > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), time.Duration(c.timeout*float64(time.Second)))
	} else {
		ctx, cancel = context.WithCancel(context.Background())
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	got := make(chan struct{})
	go func() {
		<-sigs
		close(got)
		cancel()
	}()
	stopped = func() bool {
		select {
		case <-got:
			return true
		default:
			return false
		}
	}
	return ctx, cancel, stopped
}

// codeNames are the canonical upper-case names (grpc-go's Code.String() says "InvalidArgument").
var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL",
	codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

func codeName(err error) (string, string) {
	st := status.Convert(err)
	if name, ok := codeNames[st.Code()]; ok {
		return name, st.Message()
	}
	return st.Code().String(), st.Message()
}

// --- request encoding (observer.GetFlowsRequest) ---

func encodeGetFlowsRequest(number uint64, first, follow, badFilter bool) []byte {
	var b []byte
	if number != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType) // number
		b = protowire.AppendVarint(b, number)
	}
	if follow {
		b = protowire.AppendTag(b, 3, protowire.VarintType) // follow
		b = protowire.AppendVarint(b, 1)
	}
	if badFilter {
		// whitelist (6): FlowFilter{source_ip (1): "10.0.0.0/99"}, a CIDR no server can accept.
		var filter []byte
		filter = protowire.AppendTag(filter, 1, protowire.BytesType)
		filter = protowire.AppendString(filter, "10.0.0.0/99")
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = protowire.AppendBytes(b, filter)
	}
	if first {
		b = protowire.AppendTag(b, 9, protowire.VarintType) // first
		b = protowire.AppendVarint(b, 1)
	}
	return b
}

// --- response scanning ---

// field returns the payload of the last occurrence of length-delimited field num in a message (the
// protobuf rule for a repeated singular message field is "last one wins"; merging is not needed here).
func field(msg []byte, num protowire.Number) (payload []byte, found bool, err error) {
	for len(msg) > 0 {
		n, typ, tagLen := protowire.ConsumeTag(msg)
		if tagLen < 0 {
			return nil, false, protowire.ParseError(tagLen)
		}
		msg = msg[tagLen:]
		if n == num && typ == protowire.BytesType {
			v, vLen := protowire.ConsumeBytes(msg)
			if vLen < 0 {
				return nil, false, protowire.ParseError(vLen)
			}
			payload, found = v, true
			msg = msg[vLen:]
			continue
		}
		vLen := protowire.ConsumeFieldValue(n, typ, msg)
		if vLen < 0 {
			return nil, false, protowire.ParseError(vLen)
		}
		msg = msg[vLen:]
	}
	return payload, found, nil
}

// varintField returns the last value of varint field num (0 when absent, as proto3 says).
func varintField(msg []byte, num protowire.Number) (uint64, error) {
	var value uint64
	for len(msg) > 0 {
		n, typ, tagLen := protowire.ConsumeTag(msg)
		if tagLen < 0 {
			return 0, protowire.ParseError(tagLen)
		}
		msg = msg[tagLen:]
		if n == num && typ == protowire.VarintType {
			v, vLen := protowire.ConsumeVarint(msg)
			if vLen < 0 {
				return 0, protowire.ParseError(vLen)
			}
			value = v
			msg = msg[vLen:]
			continue
		}
		vLen := protowire.ConsumeFieldValue(n, typ, msg)
		if vLen < 0 {
			return 0, protowire.ParseError(vLen)
		}
		msg = msg[vLen:]
	}
	return value, nil
}

func stringField(msg []byte, num protowire.Number) (string, error) {
	v, _, err := field(msg, num)
	return string(v), err
}

// flowDport is Flow.l4 (6) -> TCP (1), UDP (2) or SCTP (5) -> destination_port (2); -1 for other L4s.
func flowDport(flow []byte) (int64, error) {
	l4, found, err := field(flow, 6)
	if err != nil || !found {
		return -1, err
	}
	for _, proto := range []protowire.Number{1, 2, 5} {
		l4msg, found, err := field(l4, proto)
		if err != nil {
			return -1, err
		}
		if found {
			port, err := varintField(l4msg, 2)
			return int64(port), err
		}
	}
	return -1, nil
}

// --- getflows ---

type flowsResult struct {
	Flows      uint64  `json:"flows"`
	Lost       uint64  `json:"lost"`
	Seconds    float64 `json:"seconds"`
	Status     string  `json:"status"`
	Message    string  `json:"message"`
	Bytes      uint64  `json:"bytes"`
	FirstDport *int64  `json:"first_dport"`
	LastDport  *int64  `json:"last_dport"`
	Responses  uint64  `json:"responses"`
	End        string  `json:"end"`
	CPUSeconds float64 `json:"cpu_seconds"`
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return -1
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func runGetFlows(args []string) int {
	fs := flag.NewFlagSet("getflows", flag.ExitOnError)
	var cf connFlags
	cf.register(fs)
	follow := fs.Bool("follow", false, "keep the stream open for new flows")
	number := fs.Uint64("number", 0, "how many flows (0: server default, all history)")
	first := fs.Bool("first", false, "the oldest --number flows instead of the newest")
	stopAt := fs.Int64("stop-at-dport", -1, "stop after a flow with this destination port (counted)")
	badFilter := fs.Bool("bad-filter", false, "send a whitelist with an invalid source_ip CIDR")
	progress := fs.Bool("progress", false, "print `flows N` after each response (what a test waits on)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	conn, err := cf.dial()
	if err != nil {
		fmt.Fprintln(os.Stderr, "flowfollow:", err)
		return 2
	}
	defer conn.Close()
	ctx, cancel, stopped := cf.context()
	defer cancel()

	res := flowsResult{Status: "OK"}
	fail := func(err error) int {
		res.Status, res.Message = codeName(err)
		res.End = "error"
		res.CPUSeconds = cpuSeconds()
		if stopped() {
			// Stopped from outside (benchmark end): the counts are the result, not a failure.
			res.Status, res.Message, res.End = "OK", "", "signal"
		}
		printJSON(&res)
		if res.Status == "OK" {
			return 0
		}
		return 1
	}

	desc := &grpc.StreamDesc{StreamName: "GetFlows", ServerStreams: true}
	stream, err := conn.NewStream(ctx, desc, methodGetFlows)
	if err != nil {
		return fail(err)
	}
	req := encodeGetFlowsRequest(*number, *first, *follow, *badFilter)
	if err := stream.SendMsg(&req); err != nil {
		// SendMsg returns io.EOF when the server already ended the call; RecvMsg then has the status.
		var msg []byte
		return fail(stream.RecvMsg(&msg))
	}
	if err := stream.CloseSend(); err != nil {
		return fail(err)
	}
	fmt.Println("ready")

	var tFirst, tLast time.Time
	for {
		var msg []byte
		if err := stream.RecvMsg(&msg); err != nil {
			if tLast.After(tFirst) {
				res.Seconds = tLast.Sub(tFirst).Seconds()
			}
			res.CPUSeconds = cpuSeconds()
			if errors.Is(err, io.EOF) { // the server ended the stream with OK
				res.End = "eof"
				printJSON(&res)
				return 0
			}
			return fail(err)
		}
		tLast = time.Now()
		if res.Responses == 0 {
			tFirst = tLast
		}
		res.Responses++
		res.Bytes += uint64(len(msg))
		done, err := scanResponse(msg, &res, *stopAt)
		if err != nil {
			res.Status, res.Message, res.End = "DATA_LOSS", "undecodable response: "+err.Error(), "error"
			res.CPUSeconds = cpuSeconds()
			printJSON(&res)
			return 1
		}
		if *progress {
			fmt.Printf("flows %d\n", res.Flows)
		}
		if done {
			res.Seconds = tLast.Sub(tFirst).Seconds()
			res.End = "stop-dport"
			res.CPUSeconds = cpuSeconds()
			printJSON(&res)
			return 0
		}
	}
}

// scanResponse folds one GetFlowsResponse into res; true when the --stop-at-dport flow was seen.
func scanResponse(msg []byte, res *flowsResult, stopAt int64) (bool, error) {
	for len(msg) > 0 {
		n, typ, tagLen := protowire.ConsumeTag(msg)
		if tagLen < 0 {
			return false, protowire.ParseError(tagLen)
		}
		msg = msg[tagLen:]
		if typ != protowire.BytesType || (n != 1 && n != 3) {
			vLen := protowire.ConsumeFieldValue(n, typ, msg)
			if vLen < 0 {
				return false, protowire.ParseError(vLen)
			}
			msg = msg[vLen:]
			continue
		}
		v, vLen := protowire.ConsumeBytes(msg)
		if vLen < 0 {
			return false, protowire.ParseError(vLen)
		}
		msg = msg[vLen:]
		if n == 3 { // lost_events: LostEvent.num_events_lost (2)
			lost, err := varintField(v, 2)
			if err != nil {
				return false, err
			}
			res.Lost += lost
			continue
		}
		res.Flows++ // flow (1)
		dport, err := flowDport(v)
		if err != nil {
			return false, err
		}
		if res.FirstDport == nil {
			first := dport
			res.FirstDport = &first
		}
		last := dport
		res.LastDport = &last
		if stopAt >= 0 && dport == stopAt {
			return true, nil
		}
	}
	return false, nil
}

// --- status ---

type statusResult struct {
	NumFlows  uint64 `json:"num_flows"`
	MaxFlows  uint64 `json:"max_flows"`
	SeenFlows uint64 `json:"seen_flows"`
	Version   string `json:"version"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func runStatus(args []string) int {
	fs := flag.NewFlagSet("status", flag.ExitOnError)
	var cf connFlags
	cf.register(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	conn, err := cf.dial()
	if err != nil {
		fmt.Fprintln(os.Stderr, "flowfollow:", err)
		return 2
	}
	defer conn.Close()
	ctx, cancel, _ := cf.context()
	defer cancel()

	req := []byte{} // ServerStatusRequest has no fields
	var resp []byte
	res := statusResult{Status: "OK"}
	if err := conn.Invoke(ctx, methodServerStatus, &req, &resp); err != nil {
		res.Status, res.Message = codeName(err)
		printJSON(&res)
		return 1
	}
	// ServerStatusResponse: num_flows 1, max_flows 2, seen_flows 3, version 8.
	for _, f := range []struct {
		num protowire.Number
		dst *uint64
	}{{1, &res.NumFlows}, {2, &res.MaxFlows}, {3, &res.SeenFlows}} {
		if *f.dst, err = varintField(resp, f.num); err != nil {
			break
		}
	}
	if err == nil {
		res.Version, err = stringField(resp, 8)
	}
	if err != nil {
		res.Status, res.Message = "DATA_LOSS", "undecodable response: "+err.Error()
		printJSON(&res)
		return 1
	}
	printJSON(&res)
	return 0
}

func printJSON(v interface{}) {
	out, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flowfollow:", err)
		return
	}
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: flowfollow getflows|status --addr ADDR [flags] (-h for flags)")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "getflows":
		os.Exit(runGetFlows(os.Args[2:]))
	case "status":
		os.Exit(runStatus(os.Args[2:]))
	default:
		fmt.Fprintf(os.Stderr, "flowfollow: unknown command %q (getflows, status)\n", os.Args[1])
		os.Exit(2)
	}
}
