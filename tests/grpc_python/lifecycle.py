#!/usr/bin/env python3
"""Drives the whole user lifecycle of usersvc through a Python gRPC client.

The client stubs are generated at run time from the repository's proto/
directory with grpcio-tools, so this proves that another language's
toolchain can use the contract as published.

Environment:
  USERSVC_GRPC_ADDR   host:port of a running `usersvc serve` (required)
  USERSVC_API_KEY     an application's API key (required)
  USERSVC_PROTO_DIR   proto root (default: <repo>/proto, found from this file)

Prints one line per check, then `N passed, M failed`; exits non-zero when
any check failed.
"""

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import uuid

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.environ.get(
    "USERSVC_PROTO_DIR", os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
)
PROTO_FILES = ["usersvc/v1/users.proto", "usersvc/v1/groups.proto"]
TIMEOUT = 15  # seconds per RPC
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def generate_stubs():
    """Compiles the protos into a temp dir and puts it on sys.path."""
    out = tempfile.mkdtemp(prefix="usersvc-pystubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        PROTO_DIR,
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *PROTO_FILES,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        print("protoc failed")
        print("0 passed, 1 failed")
        sys.exit(1)
    sys.path.insert(0, out)
    return out


STUB_DIR = generate_stubs()

from google.protobuf import empty_pb2, field_mask_pb2, struct_pb2  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402
from usersvc.v1 import groups_pb2  # noqa: E402
from usersvc.v1 import groups_pb2_grpc  # noqa: E402
from usersvc.v1 import users_pb2 as pb  # noqa: E402
from usersvc.v1 import users_pb2_grpc  # noqa: E402

ADDR = os.environ["USERSVC_GRPC_ADDR"]
API_KEY = os.environ["USERSVC_API_KEY"]

passed = 0
skipped = 0
failed = []


class CheckFailed(Exception):
    pass


class Skip(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def check(name):
    """Decorator: runs the function at once as one named check."""

    def run(fn):
        global passed, skipped
        try:
            result = fn()
        except Skip as e:
            skipped += 1
            print(f"skip {name}: {e}", flush=True)
            return None
        except Exception as e:  # noqa: BLE001
            failed.append(name)
            detail = (
                str(e)
                if isinstance(e, CheckFailed)
                else "".join(traceback.format_exception_only(type(e), e)).strip()
            )
            print(f"FAIL {name}: {detail}", flush=True)
            return None
        passed += 1
        print(f"ok   {name}", flush=True)
        return result

    return run


def md(token=None, key=API_KEY):
    m = []
    if key is not None:
        m.append(("x-api-key", key))
    if token is not None:
        m.append(("authorization", f"Bearer {token}"))
    return m


def rpc_error(fn, code):
    """Calls fn, which must fail with `code`; returns the grpc.RpcError."""
    try:
        fn()
    except grpc.RpcError as e:
        expect(
            e.code() == code,
            f"expected {code.name}, got {e.code().name}: {e.details()!r}",
        )
        return e
    raise CheckFailed(f"expected {code.name}, but the call succeeded")


def details_of(err):
    """Decodes google.rpc.Status details: (BadRequest|None, ErrorInfo|None)."""
    status = rpc_status.from_call(err)
    expect(status is not None, "no grpc-status-details-bin trailer")
    bad_request = error_info = None
    for any_ in status.details:
        if any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            any_.Unpack(bad_request)
        elif any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            error_info = error_details_pb2.ErrorInfo()
            any_.Unpack(error_info)
    return bad_request, error_info


def expect_violation(err, field, reason="INVALID_FIELD"):
    bad_request, info = details_of(err)
    expect(bad_request is not None, "no google.rpc.BadRequest detail")
    fields = [v.field for v in bad_request.field_violations]
    expect(field in fields, f"violations name {fields}, expected {field!r}")
    expect(info is not None, "no google.rpc.ErrorInfo detail")
    expect(info.reason == reason, f"ErrorInfo.reason {info.reason!r} != {reason!r}")
    expect(info.domain == "usersvc", f"ErrorInfo.domain {info.domain!r}")


def expect_reason(err, reason):
    _, info = details_of(err)
    expect(info is not None, "no google.rpc.ErrorInfo detail")
    expect(info.reason == reason, f"ErrorInfo.reason {info.reason!r} != {reason!r}")


channel = grpc.insecure_channel(ADDR)
try:
    grpc.channel_ready_future(channel).result(timeout=20)
except grpc.FutureTimeoutError:
    print(f"FAIL connect: no gRPC server at {ADDR}")
    print("0 passed, 1 failed")
    sys.exit(1)
users = users_pb2_grpc.UserServiceStub(channel)

suffix = uuid.uuid4().hex[:12]
USERNAME = f"PyCheck_{suffix}"
PASSWORD = "correct horse battery"
PASSWORD2 = "another staple 42"
state = {}


# ---------------------------------------------------------------- platform


@check("health Check('') is SERVING")
def _():
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    expect(r.status == health_pb2.HealthCheckResponse.SERVING, f"status {r.status}")


@check("health Check('usersvc.v1.UserService') is SERVING")
def _():
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    r = stub.Check(
        health_pb2.HealthCheckRequest(service="usersvc.v1.UserService"), timeout=TIMEOUT
    )
    expect(r.status == health_pb2.HealthCheckResponse.SERVING, f"status {r.status}")


@check("health Check('usersvc.v1.GroupService') is SERVING, unknown service NOT_FOUND")
def _():
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    r = stub.Check(
        health_pb2.HealthCheckRequest(service="usersvc.v1.GroupService"), timeout=TIMEOUT
    )
    expect(r.status == health_pb2.HealthCheckResponse.SERVING, f"status {r.status}")
    rpc_error(
        lambda: stub.Check(
            health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT
        ),
        grpc.StatusCode.NOT_FOUND,
    )


def _reflection_v1_services():
    """ListServices over grpc.reflection.v1, with a hand-built request.

    grpcio-reflection ships only v1alpha stubs, whose messages are
    wire-identical to v1; call the v1 method path with them."""
    from grpc_reflection.v1alpha import reflection_pb2

    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    responses = call(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
    )
    out = []
    for resp in responses:
        expect(resp.HasField("list_services_response"), f"reply {resp}")
        out.extend(s.name for s in resp.list_services_response.service)
    return out


@check("reflection (v1) lists UserService and GroupService")
def _():
    names = set(_reflection_v1_services())
    want = {"usersvc.v1.UserService", "usersvc.v1.GroupService"}
    expect(want <= names, f"reflection v1 lists {sorted(names)}")
    if "grpc.health.v1.Health" not in names:
        # Not a failure of the user contract, but worth seeing in the log.
        print("     note: reflection does not list grpc.health.v1.Health", flush=True)


@check("reflection serves the users.proto file descriptor")
def _():
    from grpc_reflection.v1alpha import reflection_pb2
    from google.protobuf import descriptor_pb2

    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    req = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="usersvc.v1.UserService"
    )
    resp = next(iter(call(iter([req]), timeout=TIMEOUT)))
    expect(resp.HasField("file_descriptor_response"), f"reply {resp}")
    names = []
    for raw in resp.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        names.append(fd.name)
        if fd.name == "usersvc/v1/users.proto":
            methods = {m.name for s in fd.service for m in s.method}
            expect("SignIn" in methods and "UpdateUser" in methods, f"methods {methods}")
    expect("usersvc/v1/users.proto" in names, f"files {names}")


# ---------------------------------------------------------------- sign-up


@check("CreateUser without x-api-key is UNAUTHENTICATED (MISSING_API_KEY)")
def _():
    req = pb.CreateUserRequest(user=pb.User(username=USERNAME, password=PASSWORD))
    err = rpc_error(
        lambda: users.CreateUser(req, metadata=md(key=None), timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    expect_reason(err, "MISSING_API_KEY")


@check("CreateUser with a wrong x-api-key is UNAUTHENTICATED (INVALID_API_KEY)")
def _():
    req = pb.CreateUserRequest(user=pb.User(username=USERNAME, password=PASSWORD))
    err = rpc_error(
        lambda: users.CreateUser(req, metadata=md(key="not-a-key"), timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    expect_reason(err, "INVALID_API_KEY")


@check("CreateUser with a 7-character password is INVALID_ARGUMENT on 'password'")
def _():
    req = pb.CreateUserRequest(user=pb.User(username=USERNAME, password="1234567"))
    err = rpc_error(
        lambda: users.CreateUser(req, metadata=md(), timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    expect_violation(err, "password")


@check("CreateUser with an impossible dob is INVALID_ARGUMENT on 'dob'")
def _():
    req = pb.CreateUserRequest(
        user=pb.User(username=USERNAME, password=PASSWORD, dob="1990-02-30")
    )
    err = rpc_error(
        lambda: users.CreateUser(req, metadata=md(), timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    expect_violation(err, "dob")


# ---------------------------------------------------------------- supervisor
# With the binary, the database and the application id at hand (run.sh gives
# them), a supervisor is made through the admin CLI and creates a default
# group, so that ListUserGroups has something to show for the new user.

USERSVC_BIN = os.environ.get("USERSVC_BIN")
APP_ID = os.environ.get("USERSVC_APP_ID")
HAVE_ADMIN = bool(USERSVC_BIN and APP_ID and os.environ.get("DATABASE_URL"))
groups = groups_pb2_grpc.GroupServiceStub(channel)


def need_admin():
    if not HAVE_ADMIN:
        raise Skip("needs USERSVC_BIN, USERSVC_APP_ID and DATABASE_URL")


@check("a supervisor (made with `usersvc supervisor add`) creates a default group")
def _():
    need_admin()
    boss = f"boss_{suffix}"
    users.CreateUser(
        pb.CreateUserRequest(user=pb.User(username=boss, password=PASSWORD)),
        metadata=md(),
        timeout=TIMEOUT,
    )
    res = subprocess.run(
        [USERSVC_BIN, "supervisor", "add", "--app", APP_ID, "--username", boss],
        capture_output=True,
        text=True,
        timeout=60,
    )
    expect(res.returncode == 0, f"supervisor add: {res.stderr.strip()}")
    u = users.SignIn(
        pb.SignInRequest(username=boss, password=PASSWORD), metadata=md(), timeout=TIMEOUT
    )
    state["boss_id"] = u.users_id
    state["boss_token"] = u.session_token
    g = groups.CreateGroup(
        groups_pb2.CreateGroupRequest(
            group=groups_pb2.Group(name=f"Everyone {suffix}", default=True)
        ),
        metadata=md(u.session_token),
        timeout=TIMEOUT,
    )
    expect(g.groups_id and g.HasField("default") and g.default, f"group {g}")
    state["group_id"] = g.groups_id
    state["group_name"] = g.name


def new_user_message():
    extras = struct_pb2.Value()
    extras.struct_value.update({"plan": "gold", "tags": ["a", "b"], "n": 3})
    return pb.User(
        users_id="00000000-0000-0000-0000-000000000000",  # ignored by the server
        session_token="forged",  # ignored by the server
        username=USERNAME,
        password=PASSWORD,
        email=pb.Email(primary=f"{suffix}@example.com", work=f"w{suffix}@example.org"),
        name=pb.Name(prefix="Dr.", first_name="Ada", last_name="Lovelace"),
        phone_number=pb.PhoneNumber(mobile="+1 555 0100", preferred="mobile"),
        dob="1990-12-10",
        age=34,
        gender="female",
        addresses=[
            pb.Address(
                type="Home",
                address_line1="1 Main St",
                city="Springfield",
                zip_code="12345",
                geocode=pb.Geocode(latitude=40.5, longitude=-73.25),
            )
        ],
        languages=[pb.Language(language="en", language_mode="Expressed written")],
        extras=extras,
    )


@check("CreateUser (x-api-key, self sign-up) returns a session token and no secrets")
def _():
    # The bare key is used here; the three-word form is used further on.
    u = users.CreateUser(
        pb.CreateUserRequest(user=new_user_message()), metadata=md(), timeout=TIMEOUT
    )
    expect(u.users_id and u.users_id != "00000000-0000-0000-0000-000000000000",
           f"users_id {u.users_id!r}")
    uuid.UUID(u.users_id)
    expect(len(u.session_token) >= 16 and u.session_token != "forged",
           "no (fresh) session_token")
    expect(u.username == "", "username was returned")
    expect(u.password == "", "password was returned")
    expect(RFC3339_Z.match(u.created_at), f"created_at {u.created_at!r}")
    expect(RFC3339_Z.match(u.updated_at), f"updated_at {u.updated_at!r}")
    expect(u.HasField("active") and u.active, "new user not active")
    expect(u.email.primary == f"{suffix}@example.com", f"email {u.email}")
    expect(u.name.first_name == "Ada" and u.name.last_name == "Lovelace", f"name {u.name}")
    state["id"] = u.users_id
    state["token"] = u.session_token


@check("CreateUser with the same username in another letter case is ALREADY_EXISTS")
def _():
    req = pb.CreateUserRequest(user=pb.User(username=USERNAME.upper(), password=PASSWORD))
    err = rpc_error(
        lambda: users.CreateUser(req, metadata=md(), timeout=TIMEOUT),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    expect_reason(err, "USERNAME_TAKEN")


# ---------------------------------------------------------------- reads


@check("GetUser with authorization: Bearer returns the stored profile")
def _():
    u = users.GetUser(
        pb.GetUserRequest(users_id=state["id"]), metadata=md(state["token"]), timeout=TIMEOUT
    )
    expect(u.users_id == state["id"], f"users_id {u.users_id}")
    expect(u.username == "" and u.password == "" and u.session_token == "",
           "GetUser returned username/password/session_token")
    expect(u.dob == "1990-12-10", f"dob {u.dob!r}")
    expect(u.HasField("age") and u.age == 34, f"age {u.age}")
    expect(u.gender == "female", f"gender {u.gender!r}")
    expect(u.phone_number.mobile == "+1 555 0100", f"phone {u.phone_number}")
    expect(len(u.addresses) == 1 and u.addresses[0].zip_code == "12345", f"addresses {u.addresses}")
    g = u.addresses[0].geocode
    expect(g.latitude == 40.5 and g.longitude == -73.25, f"geocode {g}")
    expect(u.languages[0].language_mode == "Expressed written", f"languages {u.languages}")
    extras = u.extras.struct_value
    expect(extras["plan"] == "gold" and list(extras["tags"]) == ["a", "b"] and extras["n"] == 3,
           f"extras {u.extras}")
    state["created_at"] = u.created_at


@check("GetUser with the three-word x-api-key form works too")
def _():
    u = users.GetUser(
        pb.GetUserRequest(users_id=state["id"]),
        metadata=md(state["token"], key=f"browser example.com {API_KEY}"),
        timeout=TIMEOUT,
    )
    expect(u.users_id == state["id"], f"users_id {u.users_id}")


@check("GetUser without a session is UNAUTHENTICATED (MISSING_SESSION)")
def _():
    err = rpc_error(
        lambda: users.GetUser(pb.GetUserRequest(users_id=state["id"]), metadata=md(), timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    expect_reason(err, "MISSING_SESSION")


# ---------------------------------------------------------------- updates


@check("UpdateUser with FieldMask [name.last_name, gender] sets one, clears the other")
def _():
    req = pb.UpdateUserRequest(
        users_id=state["id"],
        user=pb.User(name=pb.Name(last_name="King", first_name="IGNORED"), gender=""),
        update_mask=field_mask_pb2.FieldMask(paths=["name.last_name", "gender"]),
    )
    u = users.UpdateUser(req, metadata=md(state["token"]), timeout=TIMEOUT)
    expect(u.name.last_name == "King", f"last_name {u.name.last_name!r}")
    expect(u.name.first_name == "Ada", f"first_name changed: {u.name.first_name!r}")
    expect(u.name.prefix == "Dr.", f"prefix changed: {u.name.prefix!r}")
    expect(u.gender == "", f"gender not cleared: {u.gender!r}")
    expect(u.dob == "1990-12-10", f"dob changed: {u.dob!r}")
    expect(u.email.primary == f"{suffix}@example.com", "email changed")
    expect(u.username == "" and u.password == "", "secrets returned")


@check("GetUser after UpdateUser shows the change persisted")
def _():
    u = users.GetUser(
        pb.GetUserRequest(users_id=state["id"]), metadata=md(state["token"]), timeout=TIMEOUT
    )
    expect(u.name.last_name == "King" and u.name.first_name == "Ada", f"name {u.name}")
    expect(u.gender == "", f"gender {u.gender!r}")
    expect(u.created_at == state["created_at"], "created_at changed")
    expect(RFC3339_Z.match(u.updated_at), f"updated_at {u.updated_at!r}")


@check("UpdateUser with FieldMask [extras.plan] replaces one key of extras")
def _():
    extras = struct_pb2.Value()
    extras.struct_value.update({"plan": "platinum"})
    req = pb.UpdateUserRequest(
        users_id=state["id"],
        user=pb.User(extras=extras),
        update_mask=field_mask_pb2.FieldMask(paths=["extras.plan"]),
    )
    u = users.UpdateUser(req, metadata=md(state["token"]), timeout=TIMEOUT)
    e = u.extras.struct_value
    expect(e["plan"] == "platinum", f"extras {u.extras}")
    expect(list(e["tags"]) == ["a", "b"], f"other extras keys lost: {u.extras}")


@check("UpdateUser with an invalid email.primary is INVALID_ARGUMENT naming 'email.primary'")
def _():
    req = pb.UpdateUserRequest(
        users_id=state["id"],
        user=pb.User(email=pb.Email(primary="not-an-email")),
        update_mask=field_mask_pb2.FieldMask(paths=["email.primary"]),
    )
    err = rpc_error(
        lambda: users.UpdateUser(req, metadata=md(state["token"]), timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    expect_violation(err, "email.primary")
    # The same detail, read straight from the trailer.
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    expect(isinstance(raw, bytes) and raw, "no grpc-status-details-bin trailer")
    from google.rpc import status_pb2

    st = status_pb2.Status.FromString(raw)
    expect(st.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], f"trailer code {st.code}")


@check("UpdateUser with latitude 95 is INVALID_ARGUMENT naming 'addresses[0].geocode.latitude'")
def _():
    req = pb.UpdateUserRequest(
        users_id=state["id"],
        user=pb.User(addresses=[pb.Address(type="Home", geocode=pb.Geocode(latitude=95.0))]),
        update_mask=field_mask_pb2.FieldMask(paths=["addresses"]),
    )
    err = rpc_error(
        lambda: users.UpdateUser(req, metadata=md(state["token"]), timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    expect_violation(err, "addresses[0].geocode.latitude")


@check("UpdateUser with an unknown mask path is INVALID_ARGUMENT naming 'update_mask'")
def _():
    req = pb.UpdateUserRequest(
        users_id=state["id"],
        user=pb.User(),
        update_mask=field_mask_pb2.FieldMask(paths=["no_such_field"]),
    )
    err = rpc_error(
        lambda: users.UpdateUser(req, metadata=md(state["token"]), timeout=TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    expect_violation(err, "update_mask")


@check("failed updates left the profile unchanged")
def _():
    u = users.GetUser(
        pb.GetUserRequest(users_id=state["id"]), metadata=md(state["token"]), timeout=TIMEOUT
    )
    expect(u.email.primary == f"{suffix}@example.com", f"email {u.email.primary!r}")
    expect(len(u.addresses) == 1 and u.addresses[0].geocode.latitude == 40.5,
           f"addresses {u.addresses}")


# ---------------------------------------------------------------- another user


@check("a second user signs up")
def _():
    u = users.CreateUser(
        pb.CreateUserRequest(user=pb.User(username=f"other_{suffix}", password=PASSWORD)),
        metadata=md(),
        timeout=TIMEOUT,
    )
    expect(u.users_id and u.session_token, "no id or token")
    state["other_id"] = u.users_id
    state["other_token"] = u.session_token


@check("GetUser of another user's id with one's own token is NOT_FOUND (as an id of nobody's)")
def _():
    rpc_error(
        lambda: users.GetUser(
            pb.GetUserRequest(users_id=state["other_id"]),
            metadata=md(state["token"]),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


@check("UpdateUser of another user's id is NOT_FOUND")
def _():
    req = pb.UpdateUserRequest(
        users_id=state["other_id"],
        user=pb.User(gender="x"),
        update_mask=field_mask_pb2.FieldMask(paths=["gender"]),
    )
    rpc_error(
        lambda: users.UpdateUser(req, metadata=md(state["token"]), timeout=TIMEOUT),
        grpc.StatusCode.NOT_FOUND,
    )


@check("DeleteUser of another user's id is NOT_FOUND")
def _():
    rpc_error(
        lambda: users.DeleteUser(
            pb.DeleteUserRequest(users_id=state["other_id"]),
            metadata=md(state["token"]),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


# ---------------------------------------------------------------- sessions


@check("ListDisclosures lists who accessed the record, page by page, without values")
def _():
    first = users.ListDisclosures(
        pb.ListDisclosuresRequest(users_id=state["id"], page_size=1), metadata=md(state["token"]), timeout=TIMEOUT
    )
    expect(len(first.disclosures) == 1 and first.next_page_token, f"first page {first}")
    expect(first.disclosures[0].action == "user.create", f"action {first.disclosures[0].action!r}")
    rest = users.ListDisclosures(
        pb.ListDisclosuresRequest(users_id=state["id"], page_size=1000, page_token=first.next_page_token),
        metadata=md(state["token"]),
        timeout=TIMEOUT,
    )
    # Reads are recorded by a batch writer: the changes are there for sure.
    actions = [d.action for d in rest.disclosures]
    expect("user.update" in actions, f"actions {actions}")
    expect(all(d.actor and d.at for d in rest.disclosures), f"who and when {rest}")
    expect(not rest.next_page_token, "one more page after the last")
    expect("Lovelace" not in str(rest), "a value in the accounting")
    err = rpc_error(
        lambda: users.ListDisclosures(
            pb.ListDisclosuresRequest(users_id=state["id"], page_token="forged"),
            metadata=md(state["token"]),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    expect_violation(err, "page_token")


@check("VerifySession names the token's user and its expiry, and nothing of the profile")
def _():
    r = users.VerifySession(pb.VerifySessionRequest(), metadata=md(state["token"]), timeout=TIMEOUT)
    expect(r.user_id == state["id"] and r.users_id == state["id"], f"ids {r.user_id!r} {r.users_id!r}")
    expect(r.principal == "user" and not r.supervisor, f"principal {r.principal!r}")
    expect(RFC3339_Z.match(r.expires_at), f"expires_at {r.expires_at!r}")
    expect(RFC3339_Z.match(r.max_expires_at), f"max_expires_at {r.max_expires_at!r}")
    expect(r.expires_at <= r.max_expires_at, f"{r.expires_at} after {r.max_expires_at}")


@check("SignOut ends the session")
def _():
    r = users.SignOut(pb.SignOutRequest(), metadata=md(state["token"]), timeout=TIMEOUT)
    expect(isinstance(r, empty_pb2.Empty), f"reply {r!r}")


@check("GetUser with the signed-out token is UNAUTHENTICATED")
def _():
    rpc_error(
        lambda: users.GetUser(
            pb.GetUserRequest(users_id=state["id"]), metadata=md(state["token"]), timeout=TIMEOUT
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )


@check("VerifySession with the signed-out token is UNAUTHENTICATED (INVALID_SESSION)")
def _():
    err = rpc_error(
        lambda: users.VerifySession(pb.VerifySessionRequest(), metadata=md(state["token"]), timeout=TIMEOUT),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    expect_reason(err, "INVALID_SESSION")


@check("SignIn with a wrong password is UNAUTHENTICATED (INVALID_CREDENTIALS)")
def _():
    err = rpc_error(
        lambda: users.SignIn(
            pb.SignInRequest(username=USERNAME, password="wrong password!"),
            metadata=md(),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    expect_reason(err, "INVALID_CREDENTIALS")
    state["bad_pw_message"] = err.details()


@check("SignIn with an unknown username answers exactly like a wrong password")
def _():
    err = rpc_error(
        lambda: users.SignIn(
            pb.SignInRequest(username=f"nobody_{suffix}", password=PASSWORD),
            metadata=md(),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    expect(err.details() == state.get("bad_pw_message"),
           f"{err.details()!r} != {state.get('bad_pw_message')!r}")


@check("SignIn again (username in another case) returns a new session token")
def _():
    u = users.SignIn(
        pb.SignInRequest(username=USERNAME.lower(), password=PASSWORD),
        metadata=md(),
        timeout=TIMEOUT,
    )
    expect(u.users_id == state["id"], f"users_id {u.users_id}")
    expect(u.session_token and u.session_token != state["token"], "no new session_token")
    expect(u.username == "" and u.password == "", "secrets returned")
    expect(u.name.last_name == "King", f"profile not returned: {u.name}")
    state["token"] = u.session_token


@check("ListUserGroups lists the default group the new user joined")
def _():
    r = users.ListUserGroups(
        pb.ListUserGroupsRequest(users_id=state["id"]), metadata=md(state["token"]), timeout=TIMEOUT
    )
    got = [(g.groups_id, g.name) for g in r.groups]
    if HAVE_ADMIN:
        want = [(state["group_id"], state["group_name"])]
    else:
        want = []  # a fresh application has no groups
    expect(got == want, f"groups {got}, expected {want}")


@check("a supervisor reads the user, and sees them among the group's members")
def _():
    need_admin()
    u = users.GetUser(
        pb.GetUserRequest(users_id=state["id"]), metadata=md(state["boss_token"]), timeout=TIMEOUT
    )
    expect(u.users_id == state["id"], f"users_id {u.users_id}")
    r = groups.ListMembers(
        groups_pb2.ListMembersRequest(groups_id=state["group_id"]),
        metadata=md(state["boss_token"]),
        timeout=TIMEOUT,
    )
    expect(state["id"] in r.users_ids, f"members {list(r.users_ids)}")


@check("ListUserGroups of another user is NOT_FOUND")
def _():
    rpc_error(
        lambda: users.ListUserGroups(
            pb.ListUserGroupsRequest(users_id=state["other_id"]),
            metadata=md(state["token"]),
            timeout=TIMEOUT,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


@check("ForgotUsername answers OK for known and unknown addresses")
def _():
    for email in (f"{suffix}@example.com", f"unknown-{suffix}@example.com"):
        r = users.ForgotUsername(
            pb.ForgotUsernameRequest(email=email), metadata=md(), timeout=TIMEOUT
        )
        expect(isinstance(r, empty_pb2.Empty), f"reply {r!r}")


@check("UpdateUser of password ends the user's other sessions, keeps this one")
def _():
    second = users.SignIn(
        pb.SignInRequest(username=USERNAME, password=PASSWORD), metadata=md(), timeout=TIMEOUT
    ).session_token
    req = pb.UpdateUserRequest(
        users_id=state["id"],
        user=pb.User(password=PASSWORD2),
        update_mask=field_mask_pb2.FieldMask(paths=["password"]),
    )
    u = users.UpdateUser(req, metadata=md(state["token"]), timeout=TIMEOUT)
    expect(u.password == "", "password returned")
    rpc_error(
        lambda: users.GetUser(
            pb.GetUserRequest(users_id=state["id"]), metadata=md(second), timeout=TIMEOUT
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    users.GetUser(
        pb.GetUserRequest(users_id=state["id"]), metadata=md(state["token"]), timeout=TIMEOUT
    )


@check("SignIn with the old password fails, with the new one succeeds")
def _():
    rpc_error(
        lambda: users.SignIn(
            pb.SignInRequest(username=USERNAME, password=PASSWORD), metadata=md(), timeout=TIMEOUT
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    u = users.SignIn(
        pb.SignInRequest(username=USERNAME, password=PASSWORD2), metadata=md(), timeout=TIMEOUT
    )
    expect(u.users_id == state["id"] and u.session_token, "no session")
    state["token2"] = u.session_token


# ---------------------------------------------------------------- deletion


@check("DeleteUser removes the user")
def _():
    r = users.DeleteUser(
        pb.DeleteUserRequest(users_id=state["id"]), metadata=md(state["token"]), timeout=TIMEOUT
    )
    expect(isinstance(r, empty_pb2.Empty), f"reply {r!r}")


@check("GetUser after DeleteUser is UNAUTHENTICATED (the session went with the user)")
def _():
    for token in (state["token"], state["token2"]):
        rpc_error(
            lambda: users.GetUser(
                pb.GetUserRequest(users_id=state["id"]), metadata=md(token), timeout=TIMEOUT
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )


@check("SignIn of the deleted user is UNAUTHENTICATED")
def _():
    rpc_error(
        lambda: users.SignIn(
            pb.SignInRequest(username=USERNAME, password=PASSWORD2), metadata=md(), timeout=TIMEOUT
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )


@check("the username is free again after deletion")
def _():
    u = users.CreateUser(
        pb.CreateUserRequest(user=pb.User(username=USERNAME, password=PASSWORD)),
        metadata=md(),
        timeout=TIMEOUT,
    )
    expect(u.users_id and u.users_id != state["id"], f"users_id {u.users_id}")
    users.DeleteUser(
        pb.DeleteUserRequest(users_id=u.users_id), metadata=md(u.session_token), timeout=TIMEOUT
    )


@check("the second user is unaffected and deletes themself")
def _():
    u = users.GetUser(
        pb.GetUserRequest(users_id=state["other_id"]),
        metadata=md(state["other_token"]),
        timeout=TIMEOUT,
    )
    expect(u.users_id == state["other_id"], f"users_id {u.users_id}")
    users.DeleteUser(
        pb.DeleteUserRequest(users_id=state["other_id"]),
        metadata=md(state["other_token"]),
        timeout=TIMEOUT,
    )


@check("the deleted user left the group's members")
def _():
    need_admin()
    r = groups.ListMembers(
        groups_pb2.ListMembersRequest(groups_id=state["group_id"]),
        metadata=md(state["boss_token"]),
        timeout=TIMEOUT,
    )
    expect(state["id"] not in r.users_ids, f"members {list(r.users_ids)}")


@check("the supervisor deletes the group and then themself")
def _():
    need_admin()
    groups.DeleteGroup(
        groups_pb2.DeleteGroupRequest(groups_id=state["group_id"]),
        metadata=md(state["boss_token"]),
        timeout=TIMEOUT,
    )
    users.DeleteUser(
        pb.DeleteUserRequest(users_id=state["boss_id"]),
        metadata=md(state["boss_token"]),
        timeout=TIMEOUT,
    )


channel.close()
for name in failed:
    print(f"failed: {name}")
summary = f"{passed} passed, {len(failed)} failed"
if skipped:
    summary += f", {skipped} skipped"
print(summary)
sys.exit(1 if failed else 0)
