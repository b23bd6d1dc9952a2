"""Reconciliation against the real channels' bill formats: a day of Alipay and WeChat Pay
orders, paid by signed notifies and partly refunded through the admin API, reconciled
against each channel's daily bill written in its documented format (Alipay: zipped GBK
业务明细 with '#' header/footer lines; WeChat Pay: backtick-prefixed ALL bill with its
summary). Clean books reconcile; a seeded fault in the bill is found; the CLI reads the
files with --statement/--format."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import sys
import zipfile
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from billing import reconcile
from billing.orders import format_yuan
from server.auth import Role
from tests import channel_keys as ck
from tests.integration.money_support import auth, create_order, money_server
from tests.support import check_invariants, make_user

TZ = "Asia/Shanghai"
CN = ZoneInfo("Asia/Shanghai")
FORM = {"content-type": "application/x-www-form-urlencoded"}

# Bill rows: ("PAY", trade_no, order_id, "", fen, beijing time) and
#            ("REFUND", trade_no, order_id, refund_id, fen, beijing time).
Row = tuple[str, str, str, str, int, str]

ALIPAY_HEADER = ("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,"
                 "操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,"
                 "支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,"
                 "卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注")
WX_HEADER = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
             "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
             "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,"
             "费率备注")
WX_SUMMARY = ("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,"
              "申请退款总金额")


def alipay_bill(rows: list[Row], day: str) -> bytes:
    """The downloaded zip: a GBK detail CSV with its '#' lines, and the summary file."""
    out = []
    for typ, trade, order, refund, fen, t in rows:
        amount = format_yuan(fen) if typ == "PAY" else "-" + format_yuan(fen)
        out.append(",".join([f"{trade}\t", f"{order}\t", "交易\t" if typ == "PAY" else "退款\t",
                             "金币充值", t, t, "\t", "\t", "\t", "\t", "*三(138****0000)\t",
                             amount, amount, "0.00", "0.00", "0.00", "0.00", "0.00", "",
                             "0.00\t", "0.00", f"{refund}\t", "0.00", "0.00", ""]))
    pays = [r[4] for r in rows if r[0] == "PAY"]
    refunds = [r[4] for r in rows if r[0] == "REFUND"]
    d = day.replace("-", "")
    text = "\r\n".join([
        "#支付宝业务明细查询", "#账号：[20881234567890120156]",
        f"#起始日期：[{d[:4]}年{d[4:6]}月{d[6:]}日 00:00:00]   终止日期：[...]",
        "#-----------------------------------------业务明细列表"
        "----------------------------------------",
        ALIPAY_HEADER, *out,
        "#-----------------------------------------业务明细列表结束"
        "------------------------------------",
        f"#交易合计：{len(pays)}笔，商家实收共{format_yuan(sum(pays))}元，商家优惠共0.00元",
        f"#退款合计：{len(refunds)}笔，商家实收退款共-{format_yuan(sum(refunds))}元，"
        "商家优惠退款共0.00元",
        "#导出时间：[2099年01月01日 09:42:11]"]) + "\r\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"20881234567890120156_{d}_业务明细.csv", text.encode("gbk"))
        zf.writestr(f"20881234567890120156_{d}_业务明细(汇总).csv",
                    "#支付宝业务汇总查询\r\n".encode("gbk"))
    return buf.getvalue()


def wechat_bill(rows: list[Row]) -> bytes:
    """The v3 tradebill, bill_type=ALL, tar_type=GZIP."""
    out = []
    total = asked = 0
    for typ, trade, order, refund, fen, t in rows:
        pay = typ == "PAY"
        f = [t, ck.WX_APPID, ck.WX_MCHID, "0", "", trade, order, "oUpF8uMuAJO_M2pxb1Q9",
             "NATIVE", "SUCCESS" if pay else "REFUND", "OTHERS", "CNY",
             format_yuan(fen) if pay else "0.00", "0.00", "" if pay else "503" + refund,
             "0" if pay else refund, "0.00" if pay else format_yuan(fen), "0.00",
             "" if pay else "ORIGINAL", "" if pay else "SUCCESS", "金币充值", "", "0.01000",
             "0.60%", format_yuan(fen) if pay else "0.00", "0.00" if pay else format_yuan(fen),
             ""]
        out.append(",".join("`" + x for x in f))
        total += fen if pay else 0
        asked += 0 if pay else fen
    text = "\r\n".join([WX_HEADER, *out, WX_SUMMARY,
                        f"`{len(rows)},`{format_yuan(total)},`{format_yuan(asked)},`0.00,"
                        f"`0.00000,`{format_yuan(total)},`{format_yuan(asked)}"]) + "\r\n"
    return gzip.compress(text.encode())


BILLS = {"alipay": alipay_bill, "wechatpay": lambda rows, day: wechat_bill(rows)}


@pytest.fixture
async def day_of_orders(redis_url: str, database_url: str, pool: Any, redis: Any,
                        tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    (tmp_path / "alipay.pem").write_bytes(ck.public_pem("alipay"))
    (tmp_path / "wx.pem").write_bytes(ck.public_pem("wechat"))
    srv = money_server(redis_url, database_url, alipay_app_id=ck.ALIPAY_APP_ID,
                       alipay_seller_id=ck.ALIPAY_SELLER,
                       alipay_public_key_path=str(tmp_path / "alipay.pem"),
                       wechatpay_mchid=ck.WX_MCHID, wechatpay_appid=ck.WX_APPID,
                       wechatpay_apiv3_key=ck.WX_APIV3.decode(),
                       wechatpay_platform_key_path=str(tmp_path / "wx.pem"),
                       wechatpay_platform_serial=ck.WX_SERIAL)
    await srv.start()
    try:
        async with httpx.AsyncClient(base_url=srv.base, timeout=10) as http:
            admin = await make_user(pool, redis, role=Role.ADMIN)
            orders: dict[str, list[str]] = {"alipay": [], "wechatpay": []}
            for i, (channel, yuan) in enumerate([("alipay", 6), ("alipay", 30),
                                                 ("wechatpay", 30), ("wechatpay", 98)]):
                u = await make_user(pool, redis)
                o = (await create_order(http, u, key=f"k{i}", channel=channel,
                                        pack_yuan=yuan)).json()["order"]
                orders[channel].append(o["id"])
                if channel == "alipay":
                    r = await http.post("/api/pay/notify/alipay", headers=FORM,
                                        content=ck.alipay_body(ck.alipay_params(
                                            o["id"], f"{yuan}.00",
                                            trade_no=f"20261125220014000000000000{i}")))
                    assert r.text == "success"
                else:
                    body, h = ck.wechat_notify(o["id"], yuan * 100,
                                               transaction_id=f"42000000002026112500000000{i}")
                    r = await http.post("/api/pay/notify/wechatpay", content=body, headers=h)
                    assert r.status_code == 200
            for channel in orders:  # a partial refund on each channel's first order
                r = await http.post("/api/admin/refunds",
                                    headers={**auth(admin), "idempotency-key": f"f-{channel}"},
                                    content=orjson.dumps({"order_id": orders[channel][0],
                                                          "amount_fen": 300,
                                                          "reason": "asked"}))
                assert r.status_code == 201, r.text  # journaled; paid back by hand
            await check_invariants(redis, pool)
            day = datetime.now(CN).date()
            yield {"srv": srv, "day": day, "orders": orders}
    finally:
        await srv.stop()


async def bill_rows(pool: Any, channel: str) -> list[Row]:
    """What the channel's bill lists for the day: our paid orders and done refunds."""
    rows: list[Row] = [
        ("PAY", r["channel_trade_no"], r["id"], "", r["amount_fen"],
         r["paid_at"].astimezone(CN).strftime("%Y-%m-%d %H:%M:%S"))
        for r in await pool.fetch("SELECT * FROM recharge_orders WHERE channel = $1 AND "
                                  "paid_at IS NOT NULL ORDER BY paid_at", channel)]
    rows += [("REFUND", r["channel_trade_no"], r["order_id"], r["id"], r["amount_fen"],
              r["done_at"].astimezone(CN).strftime("%Y-%m-%d %H:%M:%S"))
             for r in await pool.fetch(
                 """SELECT f.*, o.channel_trade_no FROM refunds f
                      JOIN recharge_orders o ON o.id = f.order_id
                     WHERE o.channel = $1 AND f.status = 'done'""", channel)]
    return rows


async def giftd_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    exe = str(Path(sys.executable).with_name("giftd"))
    p = await asyncio.create_subprocess_exec(exe, *args, env={**os.environ, **env},
                                             stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("fmt", ["alipay", "wechatpay"])
async def test_reconcile_against_the_channels_bill_finds_every_seeded_fault(
        day_of_orders: dict[str, Any], fmt: str, pool: Any, redis: Any, redis_url: str,
        database_url: str, tmp_path: Path) -> None:
    b = day_of_orders
    day = b["day"]
    write = BILLS[fmt]
    rows = await bill_rows(pool, fmt)
    assert [r[0] for r in rows].count("PAY") == 2 and [r[0] for r in rows].count("REFUND") == 1

    async def run(rs: list[Row]) -> reconcile.Report:
        statement = reconcile.parse_statement_file(write(rs, day.isoformat()), fmt)
        return await reconcile.reconcile(pool, redis, day=day, tz=TZ, channel=fmt,
                                         statement=statement)

    def kinds(rep: reconcile.Report) -> set[tuple[str, str]]:
        return {(d.kind, d.key) for d in rep.differences}

    clean = await run(rows)
    assert clean.ok, clean.differences
    assert clean.counts["statement_rows"] == 3 and clean.counts["our_payments"] == 2

    pay0, pay1 = (r for r in rows if r[0] == "PAY")
    refund = next(r for r in rows if r[0] == "REFUND")
    # An altered amount: the channel took one fen more than the order says.
    altered = [(*r[:4], r[4] + 1, r[5]) if r is pay1 else r for r in rows]
    rep = await run(altered)
    assert kinds(rep) == {("amount_mismatch", pay1[2])}
    d = rep.differences[0]
    assert (d.ours, d.theirs) == (pay1[4], pay1[4] + 1)
    # A missing row: we credited a payment the channel does not list.
    assert kinds(await run([r for r in rows if r is not pay0])) == {
        ("missing_in_channel", pay0[2])}
    # An orphan payment: the channel was paid for an order we do not have.
    orphan: Row = ("PAY", "2026112522001499999999999999", "Rorphan0000000000000000000", "",
                   64800, pay0[5])
    assert kinds(await run([*rows, orphan])) == {
        ("missing_in_ours", "Rorphan0000000000000000000")}
    # The refund not in the bill (not paid back by hand yet).
    assert kinds(await run([r for r in rows if r is not refund])) == {
        ("refund_missing_in_channel", refund[3])}

    # The CLI: --statement FILE --format FMT (the channel follows the format).
    env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "GIFTD_TIMEZONE": TZ,
           "GIFTD_VAR_DIR": str(tmp_path / "var")}
    good, bad = tmp_path / f"{fmt}-good", tmp_path / f"{fmt}-orphan"
    good.write_bytes(write(rows, day.isoformat()))
    bad.write_bytes(write([*rows, orphan], day.isoformat()))
    code, out, err = await giftd_cli("reconcile", "--date", day.isoformat(), "--statement",
                                     str(good), "--format", fmt, "--quiet", env=env)
    assert code == 0, (out, err)
    assert json.loads(out)["channel"] == fmt and json.loads(out)["ok"] is True
    code, out, _ = await giftd_cli("reconcile", "--date", day.isoformat(), "--statement",
                                   str(bad), "--format", fmt, "--quiet", env=env)
    assert code == 1
    assert [(x["kind"], x["key"]) for x in json.loads(out)["differences"]] == [
        ("missing_in_ours", "Rorphan0000000000000000000")]
    # A malformed bill: exit 2, the line named.
    broken = tmp_path / f"{fmt}-broken"
    if fmt == "alipay":
        text = zipfile.ZipFile(io.BytesIO(good.read_bytes())).read(
            f"20881234567890120156_{day.isoformat().replace('-', '')}_业务明细.csv")
        broken.write_bytes(text.replace(b",6.00,6.00,", b",6.0,6.0,"))
    else:
        text = gzip.decompress(good.read_bytes())
        broken.write_bytes(text.replace(b"`30.00", b"`30.0", 1))
    code, out, err = await giftd_cli("reconcile", "--date", day.isoformat(), "--statement",
                                     str(broken), "--format", fmt, "--quiet", env=env)
    assert code == 2 and out == "" and "bill line" in err and "2 decimals" in err, err
