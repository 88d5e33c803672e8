{
  "targets": [
    {
      "target_name": "keyless_bridge",
      "sources": [
        "src/addon.c",
        "src/provider.c",
        "src/keymgmt.c",
        "src/decoder.c",
        "src/signature.c",
        "src/rpc.c",
        "src/pool.c",
        "src/transport_sock.c",
        "src/transport_tls.c"
      ],
      "defines": ["NAPI_VERSION=8", "OPENSSL_API_COMPAT=30000", "OPENSSL_NO_DEPRECATED"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"],
      "cflags!": ["-fno-exceptions"],
      "conditions": [
        ["OS=='mac'", {
          "xcode_settings": {
            "OTHER_CFLAGS": ["-std=gnu11", "-Wall", "-Wextra"]
          }
        }]
      ]
    },
    {
      "target_name": "no_dump",
      "sources": ["src/no_dump.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"]
    }
  ]
}
