#!/bin/sh
# Builds the libFuzzer targets with ASan + UBSan (clang >= 14, libssl-dev 3.x). See README.md "Fuzzing".
set -eu
cd "$(dirname "$0")"
CC=${CC:-clang}
FLAGS="-g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -DOPENSSL_API_COMPAT=30000 -DOPENSSL_NO_DEPRECATED"
mkdir -p out
$CC $FLAGS -o out/fuzz_answer fuzz_answer.c ../src/rpc.c ../src/transport_sock.c -lcrypto
$CC $FLAGS -o out/fuzz_pem fuzz_pem.c -lcrypto
