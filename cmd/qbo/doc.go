// Command qbo is the CLI of qbod. It speaks only the websocket API (the
// root-only unix socket by default, TCP with a token via --server): every
// command it offers is the same JSON command any websocket client can send,
// so the CLI adds nothing the API lacks. It imports mirror (the client) and
// nothing of the datapath or runtime.
package main
