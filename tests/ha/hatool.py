#!/usr/bin/env python3
"""Onboarding and admin helper for the real Home Assistant of mqtt-ha-gateway's
end-to-end test tier (see tests/ha/README.md).

Run it through tests/ha/hatool (HA_TOOL), which picks the Python of the
release the state dir runs (it only uses aiohttp, which Home Assistant itself
depends on); on 2024.3 `$HA_PYTHON hatool.py` works too. Every subcommand takes
--state-dir DIR, the directory tests/ha/start manages; the URL is read from
DIR/port. Progress and errors go to stderr; a failing command exits non-zero.

Subcommands:
  onboard     create the admin (+ refresh token), admin.token, a non-admin user
              and user.token, wait until HA runs, verify; prints the HA version
  check       verify a running HA (admin token works, no recovery/safe mode,
              expected entities present); prints the HA version
  new-token   --name CLIENT_NAME --out FILE: a fresh admin long-lived token
  revoke      --token-file FILE: revoke that long-lived token, verify 401
  set-state   --entity ID --state S [--attributes JSON]: POST /api/states/ID
  version     prints HA's version (GET /api/config)
  area        --name AREA [--entity E]...: create the area unless it exists,
              assign the entities to it; prints the area_id
  label       --name N --entity E [--entity E2]...: create the label unless
              it exists (HA 2024.4+), add it to the entities; prints the label_id
  floor       --name N --area AREA_NAME_OR_ID: create the floor unless it
              exists (HA 2024.4+), create the area if needed, put the area on
              the floor; prints the floor_id
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ADMIN_NAME = "Gateway Test Admin"
ADMIN_USERNAME = "admin"
USER_NAME = "Gateway Test User"
USER_USERNAME = "user"
USER_GROUP = "system-users"
ADMIN_TOKEN_CLIENT = "mqtt-ha-gateway tests admin"
USER_TOKEN_CLIENT = "mqtt-ha-gateway tests user"
TOKEN_LIFESPAN_DAYS = 3650

# Entities tests/ha/config must provide; their absence means a broken config.
EXPECTED_ENTITIES = [
    "light.kitchen",
    "light.hall",
    "switch.fan_plug",
    "switch.coffee_maker",
    "switch.heater",
    "lock.front_door",
    "cover.living_room_blind",
    "fan.bedroom",
    "climate.living_room",
    "sensor.living_room_temperature",
    "sensor.outdoor_humidity",
    "binary_sensor.window",
    "script.flash",
    "script.house_summary",
    "weather.home",
    "scene.evening",
    "input_boolean.kitchen_light",
    "input_number.kitchen_brightness",
    "input_button.doorbell",
    "counter.script_runs",
]

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)


class Fail(Exception):
    """An error to report on stderr without a traceback."""


def log(msg: str) -> None:
    print(f"hatool: {msg}", file=sys.stderr, flush=True)


class State:
    """Files in the state directory."""

    def __init__(self, state_dir: str) -> None:
        self.dir = Path(state_dir).resolve()
        if not self.dir.is_dir():
            raise Fail(f"state dir {self.dir} does not exist")
        port_file = self.dir / "port"
        if not port_file.is_file():
            raise Fail(f"{port_file} missing: was HA started with tests/ha/start?")
        port = port_file.read_text().strip()
        if not port.isdigit():
            raise Fail(f"{port_file} does not hold a port number: {port!r}")
        self.url = f"http://127.0.0.1:{port}"
        self.client_id = self.url + "/"

    def path(self, name: str) -> Path:
        return self.dir / name

    def has(self, name: str) -> bool:
        p = self.path(name)
        return p.is_file() and p.stat().st_size > 0

    def read(self, name: str) -> str:
        return read_secret(self.path(name))

    def write(self, name: str, value: str) -> None:
        write_secret(self.path(name), value)

    def read_or_create_password(self, name: str) -> str:
        if not self.has(name):
            self.write(name, secrets.token_urlsafe(18))
        return self.read(name)


def read_secret(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except OSError as err:
        raise Fail(f"cannot read {path}: {err}") from err
    if not value:
        raise Fail(f"{path} is empty")
    return value


def write_secret(path: Path, value: str) -> None:
    """Write atomically, mode 0600, no trailing newline."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, value.encode())
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def jwt_issuer(token: str) -> str:
    """The `iss` claim of an HA access token is the id of its refresh token."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        iss = json.loads(base64.urlsafe_b64decode(payload))["iss"]
    except (IndexError, ValueError, KeyError, TypeError) as err:
        raise Fail("token is not a Home Assistant JWT access token") from err
    if not isinstance(iss, str) or not iss:
        raise Fail("token has no `iss` claim")
    return iss


# --------------------------------------------------------------------- HTTP


async def http(
    session: aiohttp.ClientSession,
    st: State,
    method: str,
    path: str,
    *,
    token: str | None = None,
    json_body: Any = None,
    form: dict[str, str] | None = None,
    expect: tuple[int, ...] = (200,),
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(
        method, st.url + path, headers=headers, json=json_body, data=form
    ) as resp:
        text = await resp.text()
        if resp.status not in expect:
            raise Fail(f"{method} {path} -> HTTP {resp.status}: {text[:500]}")
        try:
            body: Any = json.loads(text) if text else None
        except ValueError:
            body = text
        return resp.status, body


async def token_from_code(session: aiohttp.ClientSession, st: State, code: str) -> dict:
    _, body = await http(
        session,
        st,
        "POST",
        "/auth/token",
        form={"grant_type": "authorization_code", "code": code, "client_id": st.client_id},
    )
    if not isinstance(body, dict) or "access_token" not in body:
        raise Fail(f"/auth/token returned no access token: {body!r}")
    return body


async def access_from_refresh(session: aiohttp.ClientSession, st: State) -> str:
    """A short-lived admin access token from STATE_DIR/admin.refresh."""
    if not st.has("admin.refresh"):
        raise Fail(f"{st.path('admin.refresh')} missing: run onboard first")
    _, body = await http(
        session,
        st,
        "POST",
        "/auth/token",
        form={
            "grant_type": "refresh_token",
            "refresh_token": st.read("admin.refresh"),
            "client_id": st.client_id,
        },
    )
    return body["access_token"]


async def login_flow(
    session: aiohttp.ClientSession, st: State, username: str, password: str
) -> str:
    """Log in like the frontend does; returns an authorization code."""
    _, flow = await http(
        session,
        st,
        "POST",
        "/auth/login_flow",
        json_body={
            "client_id": st.client_id,
            "handler": ["homeassistant", None],
            "redirect_uri": st.client_id,
        },
    )
    _, result = await http(
        session,
        st,
        "POST",
        f"/auth/login_flow/{flow['flow_id']}",
        json_body={"client_id": st.client_id, "username": username, "password": password},
    )
    if result.get("type") != "create_entry":
        raise Fail(f"login as {username!r} failed: {result!r}")
    return result["result"]


# ---------------------------------------------------------------- websocket


class WS:
    """Minimal Home Assistant websocket API client."""

    def __init__(self, session: aiohttp.ClientSession, st: State, token: str) -> None:
        self.session, self.st, self.token = session, st, token
        self.conn: aiohttp.ClientWebSocketResponse | None = None
        self.next_id = 1

    async def __aenter__(self) -> "WS":
        ws_url = self.st.url.replace("http://", "ws://") + "/api/websocket"
        self.conn = await self.session.ws_connect(ws_url, heartbeat=None)
        hello = await self.conn.receive_json(timeout=30)
        if hello.get("type") != "auth_required":
            raise Fail(f"websocket: unexpected greeting {hello!r}")
        await self.conn.send_json({"type": "auth", "access_token": self.token})
        reply = await self.conn.receive_json(timeout=30)
        if reply.get("type") != "auth_ok":
            raise Fail(f"websocket auth failed: {reply!r}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def call(self, msg_type: str, **fields: Any) -> Any:
        assert self.conn is not None
        msg_id = self.next_id
        self.next_id += 1
        await self.conn.send_json({"id": msg_id, "type": msg_type, **fields})
        while True:
            msg = await self.conn.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise Fail(f"websocket {msg_type}: connection ended ({msg.type.name})")
            reply = json.loads(msg.data)
            if reply.get("id") == msg_id and reply.get("type") == "result":
                break
        if not reply.get("success"):
            raise Fail(f"websocket {msg_type} failed: {reply.get('error')!r}")
        return reply.get("result")


async def long_lived_token(
    session: aiohttp.ClientSession, st: State, access: str, client_name: str
) -> str:
    async with WS(session, st, access) as ws:
        return await ws.call(
            "auth/long_lived_access_token",
            client_name=client_name,
            lifespan=TOKEN_LIFESPAN_DAYS,
        )


# ---------------------------------------------------------------- readiness


async def wait_http(session: aiohttp.ClientSession, st: State, deadline: float) -> None:
    """Wait until HA's HTTP server answers at all (GET /api/ -> 401 unauthenticated)."""
    last = "no answer"
    while True:
        try:
            async with session.get(st.url + "/api/") as resp:
                if resp.status in (200, 401):
                    return
                last = f"HTTP {resp.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            last = type(err).__name__
        if time.monotonic() > deadline:
            raise Fail(f"HA at {st.url} did not answer in time (last: {last})")
        await asyncio.sleep(0.2)


async def wait_running(
    session: aiohttp.ClientSession, st: State, token: str, deadline: float
) -> dict:
    """Wait until /api/config reports state RUNNING; return the config."""
    last: Any = None
    while True:
        try:
            async with session.get(
                st.url + "/api/config", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                if resp.status == 200:
                    last = await resp.json()
                    if last.get("state") == "RUNNING":
                        return last
                else:
                    last = f"HTTP {resp.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            last = type(err).__name__
        if time.monotonic() > deadline:
            state = last.get("state") if isinstance(last, dict) else last
            raise Fail(f"HA did not reach state RUNNING in time (last: {state})")
        await asyncio.sleep(0.2)


async def verify(session: aiohttp.ClientSession, st: State, deadline: float) -> str:
    """Check a ready, healthy HA; returns its version."""
    admin = st.read("admin.token")
    cfg = await wait_running(session, st, admin, deadline)
    status, _ = await http(session, st, "GET", "/api/", token=admin, expect=(200, 401))
    if status != 200:
        raise Fail(f"admin.token rejected by GET /api/ (HTTP {status})")
    if cfg.get("safe_mode") or cfg.get("recovery_mode"):
        raise Fail(
            f"HA runs in safe/recovery mode (safe_mode={cfg.get('safe_mode')}, "
            f"recovery_mode={cfg.get('recovery_mode')}); see ha.log"
        )
    _, states = await http(session, st, "GET", "/api/states", token=admin)
    present = {s["entity_id"] for s in states}
    missing = [e for e in EXPECTED_ENTITIES if e not in present]
    if missing:
        raise Fail(f"entities missing from /api/states: {', '.join(missing)}; see ha.log")
    if st.has("user.token"):
        status, _ = await http(
            session, st, "GET", "/api/", token=st.read("user.token"), expect=(200, 401)
        )
        if status != 200:
            raise Fail(f"user.token rejected by GET /api/ (HTTP {status})")
    return str(cfg.get("version", "unknown"))


# ---------------------------------------------------------------- commands


async def ensure_admin_refresh(session: aiohttp.ClientSession, st: State) -> None:
    if st.has("admin.refresh"):
        return
    status, steps = await http(session, st, "GET", "/api/onboarding", expect=(200, 404))
    user_step_done = status == 404 or any(
        s["step"] == "user" and s["done"] for s in steps
    )
    if not user_step_done:
        log("onboarding: creating the admin user")
        password = st.read_or_create_password("admin.password")
        _, body = await http(
            session,
            st,
            "POST",
            "/api/onboarding/users",
            json_body={
                "client_id": st.client_id,
                "name": ADMIN_NAME,
                "username": ADMIN_USERNAME,
                "password": password,
                "language": "en",
            },
        )
        code = body["auth_code"]
    else:
        if not st.has("admin.password"):
            raise Fail(
                f"HA in {st.dir} is already onboarded but admin.password/admin.refresh "
                "are missing; delete the state dir and start again"
            )
        log("onboarding: admin exists, logging in again")
        code = await login_flow(session, st, ADMIN_USERNAME, st.read("admin.password"))
    tokens = await token_from_code(session, st, code)
    st.write("admin.refresh", tokens["refresh_token"])


async def token_works(session: aiohttp.ClientSession, st: State, name: str) -> bool:
    """STATE_DIR/name exists and GET /api/ accepts it (a test may have revoked it)."""
    if not st.has(name):
        return False
    status, _ = await http(session, st, "GET", "/api/", token=st.read(name), expect=(200, 401))
    if status != 200:
        log(f"{name} is no longer accepted (revoked?); replacing it")
        return False
    return True


async def ensure_user_token(session: aiohttp.ClientSession, st: State, access: str) -> None:
    if await token_works(session, st, "user.token"):
        return
    async with WS(session, st, access) as ws:
        users = await ws.call("config/auth/list")
        user = next((u for u in users if u["name"] == USER_NAME), None)
        if user is not None and not st.has("user.password"):
            # Left over from an interrupted run: start that user afresh.
            await ws.call("config/auth/delete", user_id=user["id"])
            user = None
        password = st.read_or_create_password("user.password")
        if user is None:
            log(f"creating non-admin user {USER_USERNAME!r} (group {USER_GROUP})")
            created = await ws.call(
                "config/auth/create", name=USER_NAME, group_ids=[USER_GROUP]
            )
            user = created["user"]
        if not user.get("credentials"):
            await ws.call(
                "config/auth_provider/homeassistant/create",
                user_id=user["id"],
                username=USER_USERNAME,
                password=password,
            )
    log(f"creating user.token (long-lived token of {USER_USERNAME!r})")
    code = await login_flow(session, st, USER_USERNAME, password)
    user_access = (await token_from_code(session, st, code))["access_token"]
    st.write("user.token", await long_lived_token(session, st, user_access, USER_TOKEN_CLIENT))


async def cmd_onboard(session: aiohttp.ClientSession, st: State, args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.timeout
    await wait_http(session, st, deadline)
    await ensure_admin_refresh(session, st)
    access = await access_from_refresh(session, st)
    await wait_running(session, st, access, deadline)
    if not await token_works(session, st, "admin.token"):
        log("creating admin long-lived token")
        st.write("admin.token", await long_lived_token(session, st, access, ADMIN_TOKEN_CLIENT))
    await ensure_user_token(session, st, access)
    print(await verify(session, st, deadline))


async def cmd_check(session: aiohttp.ClientSession, st: State, args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.timeout
    await wait_http(session, st, deadline)
    print(await verify(session, st, deadline))


async def cmd_new_token(session: aiohttp.ClientSession, st: State, args: argparse.Namespace) -> None:
    access = await access_from_refresh(session, st)
    token = await long_lived_token(session, st, access, args.name)
    write_secret(Path(args.out), token)
    status, _ = await http(session, st, "GET", "/api/", token=token, expect=(200, 401))
    if status != 200:
        raise Fail(f"the new token is rejected by GET /api/ (HTTP {status})")
    log(f"wrote a new admin token {args.name!r} to {args.out}")


async def cmd_revoke(session: aiohttp.ClientSession, st: State, args: argparse.Namespace) -> None:
    token = read_secret(Path(args.token_file))
    token_id = jwt_issuer(token)
    status, _ = await http(session, st, "GET", "/api/", token=token, expect=(200, 401))
    if status == 401:
        log(f"token in {args.token_file} is already rejected (HTTP 401); nothing to do")
        return
    # auth/delete_refresh_token only deletes the caller's own tokens, so use
    # the admin's refresh token when it owns this token, else the token itself
    # (this also covers user.token).
    access = await access_from_refresh(session, st)
    async with WS(session, st, access) as ws:
        own = await ws.call("auth/refresh_tokens")
    if any(t["id"] == token_id for t in own):
        async with WS(session, st, access) as ws:
            await ws.call("auth/delete_refresh_token", refresh_token_id=token_id)
    else:
        async with WS(session, st, token) as ws:
            try:
                await ws.call("auth/delete_refresh_token", refresh_token_id=token_id)
            except Fail as err:
                # HA may close this connection as soon as its token is gone.
                log(f"note: HA closed the connection that used the revoked token ({err})")
    for _ in range(50):
        status, _ = await http(session, st, "GET", "/api/", token=token, expect=(200, 401))
        if status == 401:
            log(f"revoked the token in {args.token_file} (refresh token id {token_id})")
            return
        await asyncio.sleep(0.1)
    raise Fail("token still accepted after revocation")


async def cmd_set_state(session: aiohttp.ClientSession, st: State, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"state": args.state}
    if args.attributes is not None:
        try:
            attributes = json.loads(args.attributes)
        except ValueError as err:
            raise Fail(f"--attributes is not valid JSON: {err}") from err
        if not isinstance(attributes, dict):
            raise Fail("--attributes must be a JSON object")
        body["attributes"] = attributes
    _, result = await http(
        session,
        st,
        "POST",
        f"/api/states/{args.entity}",
        token=st.read("admin.token"),
        json_body=body,
        expect=(200, 201),
    )
    print(json.dumps(result))


def version_tuple(version: str) -> tuple[int, ...]:
    """(2024, 3, 3) for "2024.3.3", (2026, 2) for "2026.2.0b1"; () if unparsable."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


async def ha_version(session: aiohttp.ClientSession, st: State) -> str:
    _, cfg = await http(session, st, "GET", "/api/config", token=st.read("admin.token"))
    return str(cfg.get("version", "unknown"))


async def require_version(
    session: aiohttp.ClientSession, st: State, minimum: tuple[int, int], what: str
) -> None:
    version = await ha_version(session, st)
    if version_tuple(version)[:2] < minimum:
        raise Fail(
            f"{what} are not supported before Home Assistant "
            f"{minimum[0]}.{minimum[1]} (this is {version})"
        )


async def admin_ws(session: aiohttp.ClientSession, st: State) -> WS:
    return WS(session, st, st.read("admin.token"))


async def ensure_named(ws: WS, kind: str, name_or_id: str) -> str:
    """The <kind>_id of the area, label or floor with that id or name (in
    HA's config/<kind>_registry); created when missing."""
    key = f"{kind}_id"
    entries = await ws.call(f"config/{kind}_registry/list")
    for e in entries:
        if e[key] == name_or_id:
            return e[key]
    for e in entries:
        if e["name"].casefold() == name_or_id.casefold():
            return e[key]
    created = await ws.call(f"config/{kind}_registry/create", name=name_or_id)
    log(f"created {kind} {name_or_id!r} ({created[key]})")
    return created[key]


async def ensure_area(ws: WS, name_or_id: str) -> str:
    return await ensure_named(ws, "area", name_or_id)


async def entity_entry(ws: WS, entity_id: str) -> dict:
    try:
        return await ws.call("config/entity_registry/get", entity_id=entity_id)
    except Fail as err:
        raise Fail(
            f"{entity_id} is not in the entity registry (entities without a "
            f"unique_id cannot get areas or labels): {err}"
        ) from err


async def cmd_version(session: aiohttp.ClientSession, st: State, args: argparse.Namespace) -> None:
    print(await ha_version(session, st))


async def cmd_area(session: aiohttp.ClientSession, st: State, args: argparse.Namespace) -> None:
    async with await admin_ws(session, st) as ws:
        area_id = await ensure_area(ws, args.name)
        for entity_id in args.entity or []:
            await entity_entry(ws, entity_id)
            await ws.call("config/entity_registry/update", entity_id=entity_id, area_id=area_id)
            log(f"{entity_id} -> area {area_id}")
    print(area_id)


async def cmd_label(session: aiohttp.ClientSession, st: State, args: argparse.Namespace) -> None:
    await require_version(session, st, (2024, 4), "labels")
    async with await admin_ws(session, st) as ws:
        label_id = await ensure_named(ws, "label", args.name)
        for entity_id in args.entity:
            entry = await entity_entry(ws, entity_id)
            current = list(entry.get("labels") or [])
            if label_id not in current:
                await ws.call(
                    "config/entity_registry/update",
                    entity_id=entity_id,
                    labels=current + [label_id],
                )
            log(f"{entity_id} has label {label_id}")
    print(label_id)


async def cmd_floor(session: aiohttp.ClientSession, st: State, args: argparse.Namespace) -> None:
    await require_version(session, st, (2024, 4), "floors")
    async with await admin_ws(session, st) as ws:
        floor_id = await ensure_named(ws, "floor", args.name)
        area_id = await ensure_area(ws, args.area)
        await ws.call("config/area_registry/update", area_id=area_id, floor_id=floor_id)
        log(f"area {area_id} is on floor {floor_id}")
    print(floor_id)


async def mqtt_entries(session: aiohttp.ClientSession, st: State) -> list[dict]:
    _, entries = await http(
        session, st, "GET", "/api/config/config_entries/entry?domain=mqtt", token=st.read("admin.token")
    )
    return [e for e in entries if e.get("domain") == "mqtt"]


async def cmd_mqtt(session: aiohttp.ClientSession, st: State, args: argparse.Namespace) -> None:
    """HA's MQTT integration as a config entry, through the config flow the
    UI runs: handler `mqtt`, then the `broker` step. Prints the entry id once
    the entry is loaded (connected or not: HA keeps retrying)."""
    token = st.read("admin.token")
    entries = await mqtt_entries(session, st)
    if entries:
        log(f"mqtt entry {entries[0]['entry_id']} exists; keeping it")
    else:
        _, step = await http(
            session, st, "POST", "/api/config/config_entries/flow",
            token=token, json_body={"handler": "mqtt", "show_advanced_options": False},
        )
        if step.get("type") != "form" or step.get("step_id") != "broker":
            raise Fail(f"the mqtt config flow did not ask for the broker: {step}")
        _, done = await http(
            session, st, "POST", f"/api/config/config_entries/flow/{step['flow_id']}",
            token=token, json_body={"broker": args.host, "port": args.port},
        )
        if done.get("type") != "create_entry":
            raise Fail(f"the mqtt config flow did not create an entry: {done}")
        log(f"mqtt entry created for {args.host}:{args.port}")
    deadline = asyncio.get_running_loop().time() + args.timeout
    while True:
        entries = await mqtt_entries(session, st)
        if entries and entries[0].get("state") == "loaded":
            print(entries[0]["entry_id"])
            return
        if asyncio.get_running_loop().time() > deadline:
            raise Fail(f"the mqtt entry is not loaded after {args.timeout} s: {entries}")
        await asyncio.sleep(0.1)


COMMANDS = {
    "mqtt": cmd_mqtt,
    "onboard": cmd_onboard,
    "check": cmd_check,
    "new-token": cmd_new_token,
    "revoke": cmd_revoke,
    "set-state": cmd_set_state,
    "version": cmd_version,
    "area": cmd_area,
    "label": cmd_label,
    "floor": cmd_floor,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--state-dir", required=True, help="directory managed by tests/ha/start")
        return p

    for name, help_text in (("onboard", "onboard a fresh HA / reuse"), ("check", "verify HA")):
        p = add(name, help_text)
        p.add_argument("--timeout", type=float, default=120, help="seconds (default 120)")
    p = add("new-token", "create an admin long-lived token")
    p.add_argument("--name", required=True, help="client_name of the token")
    p.add_argument("--out", required=True, help="file to write the token to (mode 0600)")
    p = add("revoke", "revoke a long-lived token")
    p.add_argument("--token-file", required=True)
    p = add("set-state", "set an entity state via POST /api/states/<entity>")
    p.add_argument("--entity", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--attributes", help="JSON object")
    add("version", "print HA's version")
    p = add("area", "create an area (unless it exists), assign entities to it")
    p.add_argument("--name", required=True, help="area name (or an existing area_id)")
    p.add_argument("--entity", action="append", help="entity to put in the area (repeatable)")
    p = add("label", "create a label (HA 2024.4+) and add it to entities")
    p.add_argument("--name", required=True)
    p.add_argument("--entity", action="append", required=True, help="repeatable")
    p = add("floor", "create a floor (HA 2024.4+) and put an area on it")
    p.add_argument("--name", required=True)
    p.add_argument("--area", required=True, help="area name or area_id (created if missing)")
    p = add("mqtt", "set up HA's MQTT integration (config entry) for a broker")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--timeout", type=float, default=30, help="seconds until loaded (default 30)")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> None:
    st = State(args.state_dir)
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        await COMMANDS[args.command](session, st, args)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(amain(args))
    except Fail as err:
        log(f"error: {err}")
        return 1
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
        log(f"error: {type(err).__name__}: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
