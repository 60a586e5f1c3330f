#!/usr/bin/python3
"""A gRPC client of Napalm written with nothing but Debian's grpcio and stubs that
`python3 -m grpc_tools.protoc` generated from proto/napalm/v1/*.proto (and the
google.rpc subset beside this file) at test time. No Napalm code is involved.

Usage: grpc_client.py STUBS_DIR AGENT_ADDR COORDINATOR_ADDR TOKEN DOMAIN

Against the agent (bearer token in the `authorization` metadata) it reads the
capabilities, uploads a blob (client streaming), creates DOMAIN from it, lists, stops,
deletes it, and provokes two errors: a wrong token and a missing domain. Against the
coordinator it lists the agents. It prints one JSON object on stdout; the Rust test
asserts the values. Every call has a deadline.
"""

import hashlib
import json
import sys
import uuid

STUBS, AGENT, COORD, TOKEN, DOMAIN = sys.argv[1:6]
sys.path.insert(0, STUBS)

import grpc  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from napalm.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402
from napalm.v1 import common_pb2  # noqa: E402
from napalm.v1 import coordinator_pb2, coordinator_pb2_grpc  # noqa: E402

DEADLINE = 20.0
AUTH = (("authorization", "Bearer " + TOKEN),)


def enum_name(enum, value):
    return enum.Name(value)


def error(e):
    """A failed call as JSON: status code, message and the google.rpc details."""
    out = {"code": e.code().name, "message": e.details(), "details": []}
    for key, value in e.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        st = status_pb2.Status.FromString(value)
        out["status_code"] = st.code
        for any_ in st.details:
            for cls in (error_details_pb2.ErrorInfo, error_details_pb2.ResourceInfo,
                        error_details_pb2.BadRequest):
                if any_.Is(cls.DESCRIPTOR):
                    msg = cls()
                    any_.Unpack(msg)
                    d = {"type": cls.DESCRIPTOR.full_name}
                    if cls is error_details_pb2.ErrorInfo:
                        d.update(reason=msg.reason, domain=msg.domain,
                                 metadata=dict(msg.metadata))
                    elif cls is error_details_pb2.ResourceInfo:
                        d.update(resource_type=msg.resource_type,
                                 resource_name=msg.resource_name)
                    else:
                        d.update(fields=[v.field for v in msg.field_violations])
                    out["details"].append(d)
    return out


def expect_error(f):
    try:
        f()
    except grpc.RpcError as e:
        return error(e)
    return {"code": "OK"}


def domain_json(d):
    return {
        "name": d.name,
        "uuid": d.uuid,
        "state": enum_name(common_pb2.DomainState, d.state),
        "desired_state": enum_name(common_pb2.DomainState, d.desired_state),
        "owned": d.owned,
        "labels": dict(d.labels),
        "vcpus": d.resources.vcpus,
        "memory_bytes": d.resources.memory_bytes,
        "artifacts": [a.name for a in d.artifacts],
    }


def agent_part(out):
    ch = grpc.insecure_channel(AGENT)
    grpc.channel_ready_future(ch).result(timeout=DEADLINE)
    stub = agent_pb2_grpc.AgentServiceStub(ch)

    caps = stub.GetCapabilities(agent_pb2.GetCapabilitiesRequest(include_raw_xml=True),
                                metadata=AUTH, timeout=DEADLINE)
    out["capabilities"] = {
        "agent_id": caps.agent_id,
        "agent_version": caps.agent_version,
        "libvirt_uri": caps.libvirt_uri,
        "hypervisors": [enum_name(common_pb2.Hypervisor, h) for h in caps.hypervisors],
        "cpus": caps.host.cpus,
        "memory_bytes": caps.host.memory_bytes,
        "raw_xml_has_capabilities": "<capabilities>" in caps.raw_xml,
    }

    # Client streaming: header, then the data in two chunks.
    # Unique per domain, so every run of this script uploads a blob the agent lacks.
    kernel = ("kernel of %s: the test driver does not boot it\n" % DOMAIN).encode() * 100
    ref = common_pb2.BlobRef(sha256=hashlib.sha256(kernel).hexdigest(), size=len(kernel))
    before = stub.HasBlobs(agent_pb2.HasBlobsRequest(blobs=[ref]), metadata=AUTH,
                           timeout=DEADLINE)
    half = len(kernel) // 2
    parts = [
        agent_pb2.UploadBlobRequest(header=agent_pb2.BlobHeader(
            request_id=str(uuid.uuid4()), blob=ref, name="vmlinuz")),
        agent_pb2.UploadBlobRequest(data=kernel[:half]),
        agent_pb2.UploadBlobRequest(data=kernel[half:]),
    ]
    up = stub.UploadBlob(iter(parts), metadata=AUTH, timeout=DEADLINE)
    again = stub.UploadBlob(iter(parts), metadata=AUTH, timeout=DEADLINE)
    after = stub.HasBlobs(agent_pb2.HasBlobsRequest(blobs=[ref]), metadata=AUTH,
                          timeout=DEADLINE)
    out["blob"] = {
        "missing_before": [b.sha256 for b in before.missing],
        "uploaded": up.blob.sha256,
        "already_present": up.already_present,
        "second_upload_already_present": again.already_present,
        "present_after": [b.sha256 for b in after.present],
    }

    xml = ("<domain type='test'><name>%s</name><memory unit='MiB'>64</memory>"
           "<vcpu>2</vcpu><os><type arch='i686'>hvm</type><kernel>vmlinuz</kernel></os>"
           "</domain>" % DOMAIN)
    created = stub.CreateDomain(agent_pb2.CreateDomainRequest(
        request_id=str(uuid.uuid4()), name=DOMAIN, config_xml=xml,
        artifacts=[agent_pb2.Artifact(name="vmlinuz", blob=ref)], start=True,
        labels={"client": "python-grpcio"}), metadata=AUTH, timeout=DEADLINE)
    out["created"] = domain_json(created)
    listed = stub.ListDomains(agent_pb2.ListDomainsRequest(), metadata=AUTH,
                              timeout=DEADLINE)
    out["listed"] = [d.name for d in listed.domains]
    stopped = stub.SetDomainState(agent_pb2.SetDomainStateRequest(
        request_id=str(uuid.uuid4()), name=DOMAIN, state=common_pb2.DOMAIN_STATE_SHUTOFF),
        metadata=AUTH, timeout=DEADLINE)
    out["stopped"] = domain_json(stopped)
    deleted = stub.DeleteDomain(agent_pb2.DeleteDomainRequest(
        request_id=str(uuid.uuid4()), name=DOMAIN), metadata=AUTH, timeout=DEADLINE)
    out["deleted"] = {"name": deleted.name, "existed": deleted.existed}

    out["missing_domain"] = expect_error(lambda: stub.GetDomain(
        agent_pb2.GetDomainRequest(name=DOMAIN), metadata=AUTH, timeout=DEADLINE))
    out["bad_token"] = expect_error(lambda: stub.ListDomains(
        agent_pb2.ListDomainsRequest(), metadata=(("authorization", "Bearer wrong"),),
        timeout=DEADLINE))
    out["no_token"] = expect_error(lambda: stub.ListDomains(
        agent_pb2.ListDomainsRequest(), timeout=DEADLINE))
    ch.close()


def coordinator_part(out):
    ch = grpc.insecure_channel(COORD)
    grpc.channel_ready_future(ch).result(timeout=DEADLINE)
    stub = coordinator_pb2_grpc.CoordinatorServiceStub(ch)
    agents = stub.ListAgents(coordinator_pb2.ListAgentsRequest(), metadata=AUTH,
                             timeout=DEADLINE)
    out["coordinator_agents"] = [{
        "id": a.id,
        "grpc_endpoint": a.grpc_endpoint,
        "rest_endpoint": a.rest_endpoint,
        "state": enum_name(coordinator_pb2.AgentState, a.state),
        "source": enum_name(coordinator_pb2.AgentSource, a.source),
        "version": a.version,
        "hypervisors": [enum_name(common_pb2.Hypervisor, h)
                        for h in a.capabilities.hypervisors],
    } for a in agents.agents]
    out["missing_agent"] = expect_error(lambda: stub.GetAgent(
        coordinator_pb2.GetAgentRequest(id="no-such-agent"), metadata=AUTH,
        timeout=DEADLINE))
    ch.close()


def main():
    out = {"grpcio_version": grpc.__version__}
    agent_part(out)
    coordinator_part(out)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
