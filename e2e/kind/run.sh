#!/usr/bin/env bash
# e2e/kind: FleetMQ on a throwaway kind cluster. Needs docker, kind, kubectl and helm on PATH.
# Not run in CI (no Docker engine there). Usage: e2e/kind/run.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=fleetmq-e2e
NS=fleetmq-system
KEEP=${1:-}
cleanup() { [ "$KEEP" = "--keep" ] || kind delete cluster --name "$CLUSTER"; }
trap cleanup EXIT

kind create cluster --name "$CLUSTER" --wait 120s
docker build -f broker/Dockerfile -t fleetmq-broker:e2e .
docker build -f operator/Dockerfile -t fleetmq-operator:e2e .
kind load docker-image --name "$CLUSTER" fleetmq-broker:e2e fleetmq-operator:e2e

helm install fleetmq charts/fleetmq-operator -n "$NS" --create-namespace --wait \
  --set image.repository=fleetmq-operator --set image.tag=e2e --set image.pullPolicy=Never \
  --set brokerImage.repository=fleetmq-broker --set brokerImage.tag=e2e

kubectl apply -f examples/minimal-broker.yaml
kubectl wait mqttbroker/minimal --for=condition=Ready --timeout=180s

# A client pod publishes and subscribes through the broker's Service.
kubectl run mqtt-client --image=eclipse-mosquitto:2 --restart=Never --command -- sleep 600
kubectl wait pod/mqtt-client --for=condition=Ready --timeout=120s
kubectl exec mqtt-client -- sh -c '
  mosquitto_sub -h minimal -t e2e/# -C 1 -W 30 > /tmp/got & sleep 2
  mosquitto_pub -h minimal -t e2e/hello -m kind -q 1
  wait; test "$(cat /tmp/got)" = kind'
echo "publish/subscribe through the Service: ok"

kubectl scale mqttbroker/minimal --replicas=2
kubectl wait mqttbroker/minimal --for=jsonpath='{.status.readyReplicas}'=2 --timeout=180s
echo "scaled to 2 replicas: ok"

kubectl delete -f examples/minimal-broker.yaml --wait=true
kubectl wait statefulset/minimal --for=delete --timeout=120s
echo "deleted: ok"
