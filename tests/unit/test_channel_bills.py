"""The channels' own daily bills parsed into statement rows: Alipay's trade bill (业务明细,
GBK, zipped) and WeChat Pay's v3 ALL trade bill (backtick-prefixed, with a summary).
Fixtures are written here by hand after the documented layouts (see the modules)."""

from __future__ import annotations

import gzip
import io
import zipfile

import pytest

from billing.channels.alipay_bill import AlipayBillError, parse_alipay_bill
from billing.channels.sandbox import StatementRow, statement_csv
from billing.channels.wechatpay_bill import WechatBillError, parse_wechatpay_bill
from billing.reconcile import parse_statement_file

ALIPAY_HEADER = ("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,"
                 "操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,"
                 "支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,"
                 "卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注")


def alipay_row(trade: str, order: str, typ: str, amount: str, *, request_no: str = "",
               created: str = "2026-11-25 09:59:50",
               finished: str = "2026-11-25 10:00:00") -> str:
    return ",".join([f"{trade}\t", f"{order}\t", f"{typ}\t", "金币充值", created, finished,
                     "\t", "\t", "\t", "\t", "*三(138****0000)\t", amount, amount, "0.00", "0.00",
                     "0.00", "0.00", "0.00", "", "0.00\t", "0.00",
                     f"{request_no}\t" if request_no else "\t", "0.00", "0.00", ""])


def alipay_text(rows: list[str], *, pay_total: str | None = None,
                refund_total: str | None = None, end: bool = True) -> str:
    pays = [r for r in rows if ",交易\t," in r]
    refunds = [r for r in rows if ",退款\t," in r]
    lines = ["#支付宝业务明细查询", "#账号：[20881234567890120156]",
             "#起始日期：[2026年11月25日 00:00:00]   终止日期：[2026年11月26日 00:00:00]",
             "#-----------------------------------------业务明细列表"
             "----------------------------------------",
             ALIPAY_HEADER, *rows]
    if end:
        lines += ["#-----------------------------------------业务明细列表结束"
                  "------------------------------------",
                  f"#交易合计：{len(pays)}笔，商家实收共{pay_total or '0.00'}元，商家优惠共0.00元",
                  f"#退款合计：{len(refunds)}笔，商家实收退款共{refund_total or '0.00'}元，"
                  "商家优惠退款共0.00元",
                  "#导出时间：[2026年11月26日 09:42:11]"]
    return "\r\n".join(lines) + "\r\n"


ALIPAY_ROWS = [
    alipay_row("2026112522001400000000000001", "Rorder0000000000000000001", "交易", "6.00"),
    alipay_row("2026112522001400000000000002", "Rorder0000000000000000002", "交易", "648.00",
               finished="2026-11-25 23:59:59"),
    alipay_row("2026112522001400000000000001", "Rorder0000000000000000001", "退款", "-3.00",
               request_no="Frefund00000000000000001", finished="2026-11-25 12:00:00"),
]
ALIPAY_GOOD = alipay_text(ALIPAY_ROWS, pay_total="654.00", refund_total="-3.00")
ALIPAY_WANT = [
    StatementRow("PAY", "2026112522001400000000000001", "Rorder0000000000000000001", "", 600,
                 "2026-11-25T02:00:00+00:00"),
    StatementRow("PAY", "2026112522001400000000000002", "Rorder0000000000000000002", "", 64800,
                 "2026-11-25T15:59:59+00:00"),
    StatementRow("REFUND", "2026112522001400000000000001", "Rorder0000000000000000001",
                 "Frefund00000000000000001", 300, "2026-11-25T04:00:00+00:00"),
]


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_alipay_trade_bill_gbk_csv_and_zip() -> None:
    raw = ALIPAY_GOOD.encode("gbk")
    assert raw.startswith("#支付宝业务明细查询".encode("gbk"))
    assert parse_alipay_bill(raw) == ALIPAY_WANT
    summary = "#支付宝业务汇总查询\r\n#账号：[20881234567890120156]\r\n".encode("gbk")
    z = zipped({"20881234567890120156_20261125_业务明细(汇总).csv": summary,
                "20881234567890120156_20261125_业务明细.csv": raw})
    assert parse_alipay_bill(z) == ALIPAY_WANT
    assert parse_statement_file(z, "alipay") == ALIPAY_WANT
    # A tool that re-saved it as UTF-8 (with a BOM) reads the same.
    assert parse_alipay_bill(b"\xef\xbb\xbf" + ALIPAY_GOOD.encode()) == ALIPAY_WANT


def test_alipay_amounts_are_exact_fen() -> None:
    rows = [alipay_row("T1", "R1", "交易", "0.01"), alipay_row("T2", "R2", "交易", "0.29"),
            alipay_row("T3", "R3", "交易", "1234567.89")]
    got = parse_alipay_bill(alipay_text(rows, pay_total="1234568.19").encode("gbk"))
    assert [r.amount_fen for r in got] == [1, 29, 123456789]  # 0.29 * 100 is 28.999... in float


@pytest.mark.parametrize("bad", ["6", "6.0", "6.000", "+6.00", "6,00", "1e3", "", "０.01",
                                 "06.00", "-0.00x"])
def test_alipay_malformed_amount_is_refused_naming_the_line(bad: str) -> None:
    rows = [ALIPAY_ROWS[0], alipay_row("T2", "R2", "交易", bad)]
    with pytest.raises(AlipayBillError, match="alipay bill line 7"):
        parse_alipay_bill(alipay_text(rows).encode("gbk"))


def test_alipay_malformed_files_are_refused() -> None:
    def err(text: str) -> str:
        with pytest.raises(AlipayBillError) as e:
            parse_alipay_bill(text.encode("gbk"))
        return str(e.value)

    assert "line 6: 24 fields" in err(alipay_text([ALIPAY_ROWS[0].rsplit(",", 1)[0]]))
    assert "unknown 业务类型" in err(alipay_text([alipay_row("T", "R", "冻结", "1.00")]))
    assert "line 6" in err(alipay_text([alipay_row("T", "R", "交易", "1.00",
                                                   finished="2026/11/25 10:00")]))
    assert "refunds are negative" in err(alipay_text([alipay_row("T", "R", "退款", "1.00",
                                                                 request_no="F1")]))
    assert "without 退款批次号" in err(alipay_text([alipay_row("T", "R", "退款", "-1.00")]))
    assert "empty 支付宝交易号" in err(alipay_text([alipay_row("", "R", "交易", "1.00")]))
    assert "truncated" in err(alipay_text(ALIPAY_ROWS, end=False))
    assert "says 2 rows, the list has 1" in err(
        alipay_text(ALIPAY_ROWS[1:]).replace("#交易合计：1笔", "#交易合计：2笔"))
    assert "yuan received" in err(alipay_text(ALIPAY_ROWS, pay_total="654.01",
                                              refund_total="-3.00"))
    assert "account-flow bill" in err("#支付宝账务明细查询\n#账号：[1]\n")
    assert "summary file" in err("#支付宝业务汇总查询\n")
    assert "not an Alipay trade bill" in err("type,trade_no\n")
    assert "lacks 订单金额（元）" in err(ALIPAY_GOOD.replace("订单金额（元）", "金额"))
    with pytest.raises(AlipayBillError, match="no 业务明细 detail file"):
        parse_alipay_bill(zipped({"x.csv": b"#something else\n"}))
    with pytest.raises(AlipayBillError, match="neither GBK nor UTF-8"):
        parse_alipay_bill(b"\xff\xfe\xff\xfe")


WX_HEADER = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
             "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
             "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,"
             "费率备注")
WX_SUMMARY = ("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,"
              "申请退款总金额")


def wx_pay(time: str, tx: str, order: str, total: str, *, currency: str = "CNY",
           state: str = "SUCCESS") -> str:
    f = [time, "wx8888888888888888", "1900000109", "0", "", tx, order, "oUpF8uMuAJO_M2pxb1Q9",
         "NATIVE", state, "OTHERS", currency, total, "0.00", "0", "0", "0.00", "0.00", "", "",
         "金币充值, 30 元", "", "0.18000", "0.60%", total, "0.00", ""]
    return ",".join("`" + x for x in f)


def wx_refund(time: str, tx: str, order: str, wx_refund_no: str, refund_no: str, asked: str,
              status: str = "SUCCESS") -> str:
    f = [time, "wx8888888888888888", "1900000109", "0", "", tx, order, "oUpF8uMuAJO_M2pxb1Q9",
         "NATIVE", "REFUND", "OTHERS", "CNY", "0.00", "0.00", wx_refund_no, refund_no, asked,
         "0.00", "ORIGINAL", status, "金币充值", "", "-0.01000", "0.60%", "0.00", asked, ""]
    return ",".join("`" + x for x in f)


def wx_text(rows: list[str], count: int, total: str, refunds: str) -> str:
    return "\r\n".join([WX_HEADER, *rows, WX_SUMMARY,
                        f"`{count},`{total},`{refunds},`0.00,`0.18000,`{total},`{refunds}"]
                       ) + "\r\n"


WX_ROWS = [
    wx_pay("2026-11-25 10:00:00", "4200000000202611250000000001", "Rorder0000000000000000001",
           "30.00"),
    wx_pay("2026-11-25 00:00:00", "4200000000202611250000000002", "Rorder0000000000000000002",
           "0.29"),
    wx_refund("2026-11-25 12:30:00", "4200000000202611250000000001",
              "Rorder0000000000000000001", "50300000000000000001", "Frefund00000000000000001",
              "12.00"),
]
WX_GOOD = wx_text(WX_ROWS, 3, "30.29", "12.00")
WX_WANT = [
    StatementRow("PAY", "4200000000202611250000000001", "Rorder0000000000000000001", "", 3000,
                 "2026-11-25T02:00:00+00:00"),
    StatementRow("PAY", "4200000000202611250000000002", "Rorder0000000000000000002", "", 29,
                 "2026-11-24T16:00:00+00:00"),
    StatementRow("REFUND", "4200000000202611250000000001", "Rorder0000000000000000001",
                 "Frefund00000000000000001", 1200, "2026-11-25T04:30:00+00:00"),
]


def test_wechatpay_all_bill_plain_gzip_and_bom() -> None:
    assert parse_wechatpay_bill(WX_GOOD.encode()) == WX_WANT
    assert parse_wechatpay_bill(gzip.compress(WX_GOOD.encode())) == WX_WANT
    assert parse_wechatpay_bill(b"\xef\xbb\xbf" + WX_GOOD.encode()) == WX_WANT
    assert parse_statement_file(WX_GOOD.encode(), "wechatpay") == WX_WANT
    # The comma inside 商品名称 ("金币充值, 30 元") stayed in its field.


def test_wechatpay_failed_refunds_and_revoked_payments_are_left_out() -> None:
    rows = [*WX_ROWS,
            wx_refund("2026-11-25 13:00:00", "T9", "R9", "503x", "Ffailed", "1.00", "FAIL"),
            wx_refund("2026-11-25 13:00:00", "T9", "R9", "503y", "Fpending", "2.00",
                      "PROCESSING"),
            wx_pay("2026-11-25 14:00:00", "T8", "R8", "5.00", state="REVOKED")]
    got = parse_wechatpay_bill(wx_text(rows, 6, "35.29", "15.00").encode())
    assert [r.out_refund_no for r in got if r.type == "REFUND"] == [
        "Frefund00000000000000001", "Fpending"]
    assert [r.out_trade_no for r in got if r.type == "PAY"] == [
        "Rorder0000000000000000001", "Rorder0000000000000000002"]


@pytest.mark.parametrize("bad", ["30", "30.0", "30.001", "-30.00", "3e1", "", "30,00"])
def test_wechatpay_malformed_amount_is_refused_naming_the_line(bad: str) -> None:
    rows = [WX_ROWS[0], wx_pay("2026-11-25 10:00:00", "T2", "R2", bad)]
    with pytest.raises(WechatBillError, match="wechatpay bill line 3"):
        parse_wechatpay_bill(wx_text(rows, 2, "30.00", "0.00").encode())


def test_wechatpay_malformed_bills_are_refused() -> None:
    def err(text: str | bytes) -> str:
        with pytest.raises(WechatBillError) as e:
            parse_wechatpay_bill(text.encode() if isinstance(text, str) else text)
        return str(e.value)

    one = [WX_ROWS[0]]
    assert "line 2: a data row must start with a backtick" in err(
        wx_text([WX_ROWS[0].replace("`", "")], 1, "30.00", "0.00"))
    assert "line 2: 26 fields" in err(wx_text([WX_ROWS[0].rsplit(",", 1)[0]], 1, "30.00",
                                              "0.00"))
    assert "not CNY" in err(wx_text([wx_pay("2026-11-25 10:00:00", "T", "R", "1.00",
                                            currency="USD")], 1, "1.00", "0.00"))
    assert "unknown 交易状态" in err(wx_text([wx_pay("2026-11-25 10:00:00", "T", "R", "1.00",
                                                 state="NOTPAY")], 1, "1.00", "0.00"))
    assert "unknown 退款状态" in err(wx_text([wx_refund("2026-11-25 10:00:00", "T", "R", "5",
                                                    "F", "1.00", "WHAT")], 1, "0.00", "1.00"))
    assert "line 2" in err(wx_text([wx_pay("2026/11/25 10:00", "T", "R", "1.00")], 1, "1.00",
                                   "0.00"))
    assert "总交易单数 is '2', the bill has 1" in err(wx_text(one, 2, "30.00", "0.00"))
    assert "订单总金额 is 30.01" in err(wx_text(one, 1, "30.01", "0.00"))
    assert "truncated" in err("\r\n".join([WX_HEADER, *one]))
    assert "text after the summary" in err(WX_GOOD + "`junk\r\n")
    assert "lacks 订单金额" in err(WX_GOOD.replace(",订单金额,", ",总金额,"))
    assert "not UTF-8" in err(WX_GOOD.encode("gbk"))
    assert "empty" in err(b"")


def test_sandbox_format_still_reads_our_csv() -> None:
    rows = [StatementRow("PAY", "S1", "R1", "", 600, "2026-11-25T02:00:00+00:00")]
    assert parse_statement_file(statement_csv(rows).encode(), "sandbox") == rows
    with pytest.raises(ValueError, match="unknown statement format"):
        parse_statement_file(b"", "paypal")
