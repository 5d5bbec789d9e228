#include "decoder.h"

void decoder_norm(const Model *m, float *out, const float *in, const float *w, const float *b,
                  int R) {
    const ModelConfig *c = &m->cfg;
    if (c->norm == NORM_RMS)
        m->be->ops->rmsnorm_fwd(m->be, out, in, w, c->norm_eps, R, c->C);
    else
        m->be->ops->layernorm_fwd(m->be, out, in, w, b, c->norm_eps, R, c->C);
}

void decoder_qkv(const Decoder *d, int l, int M, const float *x_in, const DecoderQKV *o) {
    const Model *m = d->m;
    const ModelConfig *c = &m->cfg;
    const LayerWeights *w = &m->layers[l];
    Backend *be = m->be;
    int C = c->C, HS = c->HS, NH = c->NH, KVH = c->KVH;
    float *qd = c->qk_norm ? o->q_raw : o->q, *kd = c->qk_norm ? o->k_raw : o->k;
    decoder_norm(m, o->xn, x_in, w->ln1_w, w->ln1_b, M);
    const LoraSite sites[3] = {LORA_Q, LORA_K, LORA_V};
    float *const outs[3] = {qd, kd, o->v};
    const float *const Ws[3] = {w->wq, w->wk, w->wv}, *const bs[3] = {w->bq, w->bk, w->bv};
    const int Ns[3] = {NH * HS, KVH * HS, KVH * HS};
    if (d->linear_n)
        d->linear_n(d->ctx, l, 3, sites, outs, o->xn, Ws, bs, M, C, Ns);
    else
        for (int i = 0; i < 3; i++)
            d->linear(d->ctx, l, sites[i], outs[i], o->xn, Ws[i], bs[i], M, C, Ns[i]);
    if (c->qk_norm) {
        be->ops->rmsnorm_fwd(be, o->q, o->q_raw, w->q_norm, c->norm_eps, M * NH, HS);
        be->ops->rmsnorm_fwd(be, o->k, o->k_raw, w->k_norm, c->norm_eps, M * KVH, HS);
    }
    if (!c->learned_pos) {
        be->ops->rope_fwd(be, o->q, o->pos, m->inv_freq, M, NH, HS, HS);
        be->ops->rope_fwd(be, o->k, o->pos, m->inv_freq, M, KVH, HS, HS);
    }
}

void decoder_out_mlp(const Decoder *d, int l, int M, const DecoderMLP *o) {
    const Model *m = d->m;
    const ModelConfig *c = &m->cfg;
    const LayerWeights *w = &m->layers[l];
    Backend *be = m->be;
    int C = c->C, FF = c->FF;
    d->linear(d->ctx, l, LORA_O, o->tmp, o->att, w->wo, w->bo, M, c->NH * c->HS, C);
    be->ops->add_fwd(be, o->x_mid, o->x_in, o->tmp, (size_t)M * C);
    decoder_norm(m, o->xn, o->x_mid, w->ln2_w, w->ln2_b, M);
    if (c->act == ACT_SILU) {
        d->linear(d->ctx, l, LORA_GATE, o->gate, o->xn, w->w_gate, w->b_gate, M, C, FF);
        d->linear(d->ctx, l, LORA_UP, o->up, o->xn, w->w_up, w->b_up, M, C, FF);
        be->ops->swiglu_fwd(be, o->act, o->gate, o->up, (size_t)M * FF);
    } else {
        d->linear(d->ctx, l, LORA_UP, o->up, o->xn, w->w_up, w->b_up, M, C, FF);
        be->ops->gelu_fwd(be, o->act, o->up, (size_t)M * FF, c->act == ACT_GELU_TANH);
    }
    if (!o->x_out) return;
    d->linear(d->ctx, l, LORA_DOWN, o->tmp, o->act, w->w_down, w->b_down, M, FF, C);
    be->ops->add_fwd(be, o->x_out, o->x_mid, o->tmp, (size_t)M * C);
}
