# shardproxy container image: a build stage with the compilers, a final stage
# with the binary, its five shared libraries and nothing else.
#
#   docker build -t shardproxy .
#   docker run --rm -p 8080:8080 -p 9901:9901 \
#       -v $PWD/my.json:/etc/shardproxy/shardproxy.json:ro shardproxy
#   docker kill -s HUP <container>      # reload (new generation, nothing dropped)
#   docker stop -t 35 <container>       # drain up to limits.drain_timeout_ms, exit 0
#
# Under the runtime's default seccomp profile io_uring is denied: the proxy
# logs why and runs on epoll. To run on io_uring (and steer with BPF), see
# docs/operations.md "Containers" and dist/seccomp.json.
FROM debian:12 AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q && apt-get install -y -q --no-install-recommends make ca-certificates
WORKDIR /src
COPY . .
# Only the build's packages (no test or bench tools), then the binary alone.
RUN make deps-build && make -j"$(nproc)" build/shardproxy && strip build/shardproxy

FROM debian:12-slim
ARG DEBIAN_FRONTEND=noninteractive
# The binary's shared libraries (ldd build/shardproxy): liburing, libbpf,
# jansson, c-ares, libelf (zlib and libc are in the base image).
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends liburing2 libbpf1 libjansson4 libc-ares2 libelf1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin shardproxy \
 && mkdir -p /etc/shardproxy
COPY --from=build /src/build/shardproxy /usr/sbin/shardproxy
COPY dist/container.json /etc/shardproxy/shardproxy.json
# Non-root from the start: no "user" key in the config (that needs
# CAP_SETUID); ports above 1024 need no capability.
USER 10001:10001
EXPOSE 8080 9901
# The supervisor handles SIGTERM as PID 1 (it drains, reaps its shards and
# exits 0); a second SIGTERM stops at once. `docker run --init` works too.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/sbin/shardproxy"]
CMD ["-c", "/etc/shardproxy/shardproxy.json"]
