"""The energy and carbon model: grid intensities from EcoLogits' data, the order of preference of
energy estimates, and their provenance landing in the ledger over real HTTP."""

from __future__ import annotations

import httpx
import pytest
from ecologits.electricity_mix_repository import electricity_mixes
from ecologits.tracers.utils import llm_impacts

from policies.base import EnergyEstimate, Profile, Stats
from providers.base import BackendInfo
from router.carbon import CarbonTable, UnknownZone
from router.config import ConfigError, parse_config
from router.fleet.energy import EcologitsEnergy, EnergyBook, power_watts, static_estimate
from tests.conftest import backend_entry

MSG = [{"role": "user", "content": "hello"}]


def _gwp(zone: str) -> float:
    mix = electricity_mixes.find_electricity_mix(zone)
    assert mix is not None
    return mix.gwp * 1000.0


# ---- grid intensity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "ecologits_zone"),
    [
        ("FR", "FRA"),
        ("fra", "FRA"),
        ("US", "USA"),
        ("DE", "DEU"),
        ("SE", "SWE"),
        (None, "WOR"),
    ],
)
def test_intensity_comes_from_ecologits(zone, ecologits_zone):
    assert CarbonTable().intensity(zone) == pytest.approx(_gwp(ecologits_zone))


def test_unknown_zone_is_an_error_naming_it():
    with pytest.raises(UnknownZone, match="'ATLANTIS'"):
        CarbonTable().intensity("ATLANTIS")


def test_intensity_file_overrides_and_extends_and_refreshes(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("FRA: 12.5\nUS-CAL: 210\n")
    table = CarbonTable(path)
    assert table.intensity("FR") == 12.5  # alpha-2 maps onto the file's alpha-3 entry
    assert table.intensity("US-CAL") == 210.0
    assert table.intensity("DE") == pytest.approx(_gwp("DEU"))
    path.write_text("FRA: 30\n")
    assert table.refresh() == 1
    assert table.intensity("FR") == 30.0
    path.write_text("FRA: lots\n")
    with pytest.raises(ValueError, match="zone 'FRA'"):
        table.refresh()


# ---- energy estimates -----------------------------------------------------------------------


def test_ecologits_derivation_matches_ecologits():
    ours = EcologitsEnergy().joules_per_output_token("gpt-4o-mini")
    energy = llm_impacts("openai", "gpt-4o-mini", 500, 1e9).energy
    assert energy is not None
    value = energy.value
    kwh = (value.min + value.max) / 2 if hasattr(value, "min") else value
    assert ours == pytest.approx(kwh * 3.6e6 / 500, rel=0.02)
    assert EcologitsEnergy().joules_per_output_token("openai/gpt-4o-mini") == ours  # provider prefix
    assert EcologitsEnergy().joules_per_output_token("our-own-finetune") is None


@pytest.mark.parametrize(
    ("cls", "declared", "model", "hardware", "source"),
    [
        ("datacenter", 0.4, "gpt-4o-mini", False, "declared"),  # declared beats derived
        ("datacenter", None, "gpt-4o-mini", False, "derived"),  # EcoLogits knows the model
        ("datacenter", None, "gpt-4o-mini", True, "none"),  # hardware known: wait for throughput
        ("sovereign", None, "gpt-4o-mini", False, "none"),  # EcoLogits describes commercial APIs only
        ("datacenter", None, "local-llama", False, "none"),
    ],
)
def test_static_estimate_order(cls, declared, model, hardware, source):
    assert static_estimate(cls, declared, model, hardware, EcologitsEnergy()).source == source


def _profile(name="b", energy=None, watts=None) -> Profile:
    return Profile(
        BackendInfo(name, "sovereign", "openai", {"m": "m"}),
        "m",
        energy=energy or EnergyEstimate(None, None, "none"),
        hardware_watts=watts,
    )


def test_energy_book_prefers_measured_then_declared_then_hardware():
    book = EnergyBook()
    declared = EnergyEstimate(0.5, 0.5, "declared")
    assert book.estimate(_profile(energy=declared, watts=700), Stats(tokens_per_s=100)) == declared
    hw = book.estimate(_profile(watts=8 * 700), Stats(tokens_per_s=100.0, inflight=3))
    assert hw == EnergyEstimate(0.0, 8 * 700 / (100.0 * 4), "derived")  # shared with 3 in flight + this one
    assert book.estimate(_profile(watts=700), Stats()).source == "none"  # no throughput yet
    book.observe("b", 300.0, 100.0, 2)  # 300 W over 2 x 100 tokens/s
    assert book.estimate(_profile(energy=declared), Stats()) == EnergyEstimate(0.0, 1.5, "measured")
    book.observe("b", 600.0, 100.0, 2)
    assert book.measured("b") == pytest.approx(1.5 + 0.3 * (3.0 - 1.5))  # EWMA
    book.observe("b", 600.0, None, 1)  # no throughput: ignored
    assert book.measured("b") == pytest.approx(1.95)


@pytest.mark.parametrize(
    ("value", "watts"),
    [
        ("350", 350.0),
        ("12.5", 12.5),
        ("-3", None),
        ("nan", None),
        ("inf", None),
        ("lots", None),
        (None, None),
    ],
)
def test_power_header(value, watts):
    assert power_watts({} if value is None else {"x-power-watts": value}) == watts


# ---- config ---------------------------------------------------------------------------------


def _cfg(**backend):
    entry = {
        "name": "eu-1",
        "class": "sovereign",
        "type": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "models": ["m"],
        **backend,
    }
    return {"backends": [entry]}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_cfg(zone="XX"), "backends[eu-1].zone: unknown grid zone 'XX'"),
        (_cfg(hardware={"gpu": "H100", "count": 8}), "backends[eu-1].hardware.watts: required key is missing"),
        (_cfg(hardware={"gpu": "H100", "watts": 700, "tdp": 1}), "backends[eu-1].hardware: unknown key 'tdp'"),
        (_cfg(carbon_intensity=-1), "backends[eu-1].carbon_intensity"),
        (_cfg(trust=2), "backends[eu-1].trust"),
        (_cfg(capabilities=["telepathy"]), "backends[eu-1].capabilities[0]: Input should be 'tools'"),
        (_cfg(context_length=0), "backends[eu-1].context_length"),
        ({**_cfg(), "carbon": {"intensity_file": "/nonexistent/grid.yaml"}}, "carbon.intensity_file: cannot read"),
    ],
)
def test_bad_energy_config_names_the_key(raw, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, "f.yaml")
    assert message in str(exc.value)


def test_zone_known_from_file_or_own_intensity(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text('{"XX": 100}')
    parse_config({**_cfg(zone="XX"), "carbon": {"intensity_file": str(grid)}})
    parse_config(_cfg(zone="XX", carbon_intensity=50))


# ---- provenance in the ledger ---------------------------------------------------------------


def _post(gw, only, model="m1"):
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        headers=gw.auth(),
        timeout=10,
        json={"model": model, "messages": MSG, "max_tokens": 8, "provider": {"only": [only]}},
    )
    assert r.status_code == 200, r.text


def test_energy_provenance_and_carbon_land_in_the_ledger(start_sim_backend, start_gateway):
    powered = start_sim_backend("powered", tokens_per_s=400.0, power_watts=300.0)
    declared = start_sim_backend("declared")
    api = start_sim_backend("api", models=["gpt-4o-mini"])
    bare = start_sim_backend("bare")
    gw = start_gateway(
        [
            backend_entry(powered, "sovereign", zone="FR", energy={"joules_per_token": 0.5}),
            backend_entry(declared, zone="PL", energy={"joules_per_token": 0.5}),
            backend_entry(api, zone="US", models={"m1": "gpt-4o-mini"}, energy=None, carbon_intensity=100.0),
            backend_entry(bare, "sovereign", zone="SE", energy=None),
        ],
        routing={"exploration": 0.0},
    )
    for name in ("powered", "powered", "declared", "api", "bare"):
        _post(gw, name)
    rows = sorted(gw.usage("acme")["recent"], key=lambda r: r["ts"])
    by = [(r["backend"], r["energy_source"]) for r in rows]
    # The first answer of "powered" brings its power reading; from then on energy is measured.
    assert by == [
        ("powered", "declared"),
        ("powered", "measured"),
        ("declared", "declared"),
        ("api", "derived"),
        ("bare", "none"),
    ]
    intensity = {"powered": _gwp("FRA"), "declared": _gwp("POL"), "api": 100.0, "bare": _gwp("SWE")}
    for row in rows:
        assert row["carbon_g"] == pytest.approx(row["energy_wh"] / 1000 * intensity[row["backend"]])
    measured = rows[1]
    assert measured["energy_wh"] > 0 and rows[-1]["energy_wh"] == 0 and rows[-1]["carbon_g"] == 0
    assert rows[2]["energy_wh"] == pytest.approx((rows[2]["input_tokens"] + rows[2]["output_tokens"]) * 0.5 / 3600)
    derived_jpt = EcologitsEnergy().joules_per_output_token("gpt-4o-mini")
    assert rows[3]["energy_wh"] == pytest.approx(rows[3]["output_tokens"] * derived_jpt / 3600)


def test_intensity_file_is_refreshed_through_the_admin_api(start_sim_backend, start_gateway, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("FRA: 20\n")
    sim = start_sim_backend("fr")
    gw = start_gateway([backend_entry(sim, zone="FR")], carbon={"intensity_file": str(grid)})

    def intensity():
        r = httpx.get(
            gw.url + "/admin/v1/route", params={"model": "m1", "tenant": "acme"}, headers=gw.admin(), timeout=10
        )
        return r.json()["models"][0]["candidates"][0]["estimate"]["carbon_intensity_g_per_kwh"]

    assert intensity() == 20.0
    grid.write_text("FRA: 35\n")
    r = httpx.post(gw.url + "/admin/v1/carbon/refresh", headers=gw.admin(), timeout=10)
    assert r.status_code == 200 and r.json() == {"zones_from_file": 1}
    assert intensity() == 35.0
    _post(gw, "fr")
    row = gw.usage("acme")["recent"][0]
    assert row["carbon_g"] == pytest.approx(row["energy_wh"] / 1000 * 35.0)
    grid.write_text("FRA: [1]\n")
    r = httpx.post(gw.url + "/admin/v1/carbon/refresh", headers=gw.admin(), timeout=10)
    assert r.status_code == 400 and "zone 'FRA'" in r.json()["error"]["message"]
    assert intensity() == 35.0  # a bad file changes nothing
