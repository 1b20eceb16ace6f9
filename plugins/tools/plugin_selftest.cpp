// Self-test of the TensorRT glue in libmaskface_plugins.so without a TensorRT runtime: dlopen()s the library,
// takes its creator through getCreators() (as IPluginRegistry::loadLibrary does) and drives every IPluginV3
// method the builder / runtime would call, with a mock IExprBuilder. `--gpu` also runs enqueue() on device
// buffers and compares with the library's CPU reference.
//
//   plugin_selftest /path/libmaskface_plugins.so [--gpu]      -> prints one line per check, exit code 0 = all pass
#include "maskface_plugins/mlra_api.h"

#include <NvInferRuntime.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int gFailures = 0;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
    if (!ok)
    {
        ++gFailures;
    }
}

// ----------------------------------------------------------------------------------- mock dimension expressions

class MockDimImpl : public apiv::VDimensionExpr
{
public:
    MockDimImpl(bool constant, int64_t value)
        : mConstant(constant)
        , mValue(value)
    {
    }
    bool isConstant() const override
    {
        return mConstant;
    }
    int64_t getConstantValue() const override
    {
        return mConstant ? mValue : -1;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

private:
    bool mConstant;
    int64_t mValue;
};

class MockDim : public IDimensionExpr
{
public:
    MockDim(bool constant, int64_t value)
        : mImplObj(constant, value)
    {
        mImpl = &mImplObj;
    }
    ~MockDim() noexcept override = default;

private:
    MockDimImpl mImplObj;
};

class MockBuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        mOwned.emplace_back(new MockDim(true, value));
        return mOwned.back().get();
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        mOwned.emplace_back(new MockDim(false, 0));
        return mOwned.back().get();
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
    std::vector<std::unique_ptr<MockDim>> mOwned;
};

class MockBuilder : public IExprBuilder
{
public:
    MockBuilder()
    {
        mImpl = &mImplObj;
    }
    ~MockBuilder() noexcept override = default;
    MockBuilderImpl mImplObj;
};

// ----------------------------------------------------------------------------------- helpers

struct Fields
{
    std::vector<PluginField> fields;
    PluginFieldCollection fc{};
    PluginFieldCollection const* get()
    {
        fc.nbFields = static_cast<int32_t>(fields.size());
        fc.fields = fields.data();
        return &fc;
    }
};

std::string serialized(IPluginV3* plugin)
{
    auto* rt = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* fc = rt->getFieldsToSerialize();
    std::string out;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        out += f.name;
        out += "=";
        for (int32_t j = 0; j < f.length; ++j)
        {
            if (f.type == PluginFieldType::kINT32)
            {
                out += std::to_string(static_cast<int32_t const*>(f.data)[j]);
            }
            else if (f.type == PluginFieldType::kFLOAT32)
            {
                char buf[64];
                std::snprintf(buf, sizeof(buf), "%.9g", static_cast<float const*>(f.data)[j]);
                out += buf;
            }
            out += j + 1 < f.length ? "," : "";
        }
        out += ";";
    }
    return out;
}

DynamicPluginTensorDesc dyn(DataType type, std::vector<int64_t> const& dims, TensorFormat format = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = format;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.desc.dims.d[i] = dims[i];
    }
    d.min = d.max = d.opt = d.desc.dims;
    return d;
}

using ForwardCpu = decltype(&mlra_forward_cpu);

int gpuEnqueue(IPluginV3* plugin, void* lib, DataType type)
{
    auto* rt = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    auto forwardCpu = reinterpret_cast<ForwardCpu>(dlsym(lib, "mlra_forward_cpu"));
    int const B = 2, C = 3, N = 40, P = 14, L = 5;
    int const H0 = 64, W0 = 80; // 256 x 320 image
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    std::uniform_real_distribution<float> uni(0.f, 1.f);
    bool const half = type == DataType::kHALF;
    size_t const elem = half ? 2 : 4;
    std::vector<std::vector<uint8_t>> host(L);
    std::vector<void*> dev(L);
    std::vector<int> hs(L), ws(L);
    std::vector<PluginTensorDesc> in(L + 1);
    for (int l = 0; l < L; ++l)
    {
        hs[l] = H0 >> l;
        ws[l] = W0 >> l;
        size_t const n = static_cast<size_t>(B) * C * hs[l] * ws[l];
        host[l].resize(n * elem);
        for (size_t i = 0; i < n; ++i)
        {
            float const v = normal(rng);
            if (half)
            {
                __half h = __float2half(v);
                std::memcpy(host[l].data() + i * 2, &h, 2);
            }
            else
            {
                std::memcpy(host[l].data() + i * 4, &v, 4);
            }
        }
        cudaMalloc(&dev[l], host[l].size());
        cudaMemcpy(dev[l], host[l].data(), host[l].size(), cudaMemcpyHostToDevice);
        in[l] = dyn(type, {B, C, hs[l], ws[l]}).desc;
    }
    std::vector<float> rois(N * 5);
    for (int n = 0; n < N; ++n)
    {
        float const x1 = -50.f + 350.f * uni(rng), y1 = -50.f + 300.f * uni(rng);
        float const w = std::exp(std::log(0.5f) + std::log(3000.f) * uni(rng)), h = w * (0.5f + uni(rng));
        float const r[5] = {static_cast<float>(n % B), x1, y1, x1 + w, y1 + h};
        std::memcpy(&rois[n * 5], r, sizeof(r));
    }
    void* dRois = nullptr;
    cudaMalloc(&dRois, rois.size() * 4);
    cudaMemcpy(dRois, rois.data(), rois.size() * 4, cudaMemcpyHostToDevice);
    in[L] = dyn(DataType::kFLOAT, {N, 5}).desc;
    PluginTensorDesc out = dyn(type, {N, C, P, P}).desc;
    size_t const outCount = static_cast<size_t>(N) * C * P * P;
    void* dOut = nullptr;
    cudaMalloc(&dOut, outCount * elem);
    std::vector<void const*> inputs(dev.begin(), dev.end());
    inputs.push_back(dRois);
    void* outputs[] = {dOut};
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    int status = rt->onShapeChange(in.data(), L + 1, &out, 1);
    status |= rt->enqueue(in.data(), &out, inputs.data(), outputs, nullptr, stream);
    cudaError_t const err = cudaStreamSynchronize(stream);
    std::vector<uint8_t> got(outCount * elem), want(outCount * elem);
    cudaMemcpy(got.data(), dOut, got.size(), cudaMemcpyDeviceToHost);
    std::vector<void const*> hostPtrs;
    for (auto& h : host)
    {
        hostPtrs.push_back(h.data());
    }
    forwardCpu(hostPtrs.data(), hs.data(), ws.data(), L, B, C, rois.data(), N, want.data(), half ? 1 : 0, P, 2, 3,
        224.f, 2, 6, 1, nullptr);
    double maxErr = 0;
    for (size_t i = 0; i < outCount; ++i)
    {
        float a, b;
        if (half)
        {
            __half ha, hb;
            std::memcpy(&ha, got.data() + i * 2, 2);
            std::memcpy(&hb, want.data() + i * 2, 2);
            a = __half2float(ha);
            b = __half2float(hb);
        }
        else
        {
            std::memcpy(&a, got.data() + i * 4, 4);
            std::memcpy(&b, want.data() + i * 4, 4);
        }
        maxErr = std::fmax(maxErr, std::fabs(static_cast<double>(a) - b));
    }
    char buf[160];
    std::snprintf(buf, sizeof(buf), "enqueue %s on the GPU == CPU reference (max abs err %.3g, cuda: %s)",
        half ? "FP16" : "FP32", maxErr, cudaGetErrorString(err));
    check(status == 0 && err == cudaSuccess && maxErr <= (half ? 2e-3 : 1e-4), buf);
    for (void* p : dev)
    {
        cudaFree(p);
    }
    cudaFree(dRois);
    cudaFree(dOut);
    cudaStreamDestroy(stream);
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 2)
    {
        std::fprintf(stderr, "usage: %s libmaskface_plugins.so [--gpu]\n", argv[0]);
        return 2;
    }
    bool const gpu = argc > 2 && std::strcmp(argv[2], "--gpu") == 0;
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    check(lib != nullptr, std::string("dlopen ") + argv[1] + (lib ? "" : std::string(": ") + dlerror()));
    if (lib == nullptr)
    {
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    check(getCreators != nullptr, "exports getCreators");
    check(dlsym(lib, "setLoggerFinder") != nullptr, "exports setLoggerFinder");
    if (getCreators == nullptr)
    {
        return 1;
    }
    int32_t nb = 0;
    IPluginCreatorInterface* const* creators = getCreators(nb);
    check(nb == 1 && creators != nullptr && creators[0] != nullptr, "getCreators returns one creator");
    InterfaceInfo const info = creators[0]->getInterfaceInfo();
    check(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1,
        std::string("creator interface is ") + info.kind);
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(std::strcmp(creator->getPluginName(), "MultiLevelRoIAlign") == 0
            && std::strcmp(creator->getPluginVersion(), "1") == 0
            && std::strcmp(creator->getPluginNamespace(), "maskface") == 0,
        "creator is maskface::MultiLevelRoIAlign version 1");
    PluginFieldCollection const* names = creator->getFieldNames();
    std::string joined;
    for (int32_t i = 0; i < names->nbFields; ++i)
    {
        joined += std::string(names->fields[i].name) + ",";
    }
    check(joined == "output_size,sampling_ratio,canonical_level,canonical_size,min_level,max_level,aligned,spatial_scales,",
        "getFieldNames: " + joined);

    // Defaults, and the ONNX parser's extra string attributes are ignored.
    Fields onnxLike;
    char const ns[] = "maskface";
    int64_t const outSize64 = 14;
    onnxLike.fields.emplace_back("plugin_namespace", ns, PluginFieldType::kCHAR, static_cast<int32_t>(sizeof(ns)));
    onnxLike.fields.emplace_back("output_size", &outSize64, PluginFieldType::kINT64, 1);
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("mlra", onnxLike.get(), TensorRTPhase::kBUILD));
    check(plugin != nullptr, "createPlugin with defaults (+ string attribute, INT64 output_size)");
    if (!plugin)
    {
        return 1;
    }
    std::string const defaults = serialized(plugin.get());
    check(defaults
            == "output_size=14;sampling_ratio=2;canonical_level=3;canonical_size=224;min_level=2;max_level=6;aligned=1;"
               "spatial_scales=0.25,0.125,0.0625,0.03125,0.015625;",
        "default attributes serialize as " + defaults);

    // Invalid attributes are refused.
    struct Bad
    {
        char const* name;
        int32_t value;
    };
    for (Bad const bad : {Bad{"output_size", 0}, Bad{"sampling_ratio", -1}, Bad{"aligned", 2}, Bad{"min_level", 7},
             Bad{"max_level", 12}})
    {
        Fields f;
        f.fields.emplace_back(bad.name, &bad.value, PluginFieldType::kINT32, 1);
        std::unique_ptr<IPluginV3> p(creator->createPlugin("bad", f.get(), TensorRTPhase::kBUILD));
        check(p == nullptr, std::string("createPlugin refuses ") + bad.name + "=" + std::to_string(bad.value));
    }
    {
        float const scales[3] = {0.25f, 0.125f, 0.0625f};
        Fields f;
        f.fields.emplace_back("spatial_scales", scales, PluginFieldType::kFLOAT32, 3);
        std::unique_ptr<IPluginV3> p(creator->createPlugin("bad", f.get(), TensorRTPhase::kBUILD));
        check(p == nullptr, "createPlugin refuses 3 spatial_scales for 5 levels");
    }

    // Capabilities.
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && build && runtime, "core, build and runtime capabilities");
    check(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0
            && std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0
            && std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0
            && std::strcmp(plugin->getInterfaceInfo().kind, "PLUGIN") == 0,
        "capability interface kinds");
    check(std::strcmp(core->getPluginName(), "MultiLevelRoIAlign") == 0
            && std::strcmp(core->getPluginNamespace(), "maskface") == 0
            && std::strcmp(core->getPluginVersion(), "1") == 0,
        "core name / namespace / version");
    check(build->getNbOutputs() == 1, "one output");

    // Types.
    for (DataType t : {DataType::kFLOAT, DataType::kHALF})
    {
        DataType inTypes[6] = {t, t, t, t, t, DataType::kFLOAT};
        DataType outType = DataType::kINT8;
        int32_t const rc = build->getOutputDataTypes(&outType, 1, inTypes, 6);
        check(rc == 0 && outType == t, std::string("output type follows features: ") + (t == DataType::kHALF ? "FP16" : "FP32"));
    }
    {
        DataType inTypes[5] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT};
        DataType outType;
        check(build->getOutputDataTypes(&outType, 1, inTypes, 5) != 0, "getOutputDataTypes refuses 5 inputs");
    }

    // Formats.
    auto combo = [&](DataType maps, DataType rois, DataType out, TensorFormat fmt = TensorFormat::kLINEAR,
                     int map3 = -1) {
        std::vector<DynamicPluginTensorDesc> io;
        for (int l = 0; l < 5; ++l)
        {
            DataType const t = (l == 3 && map3 >= 0) ? static_cast<DataType>(map3) : maps;
            io.push_back(dyn(t, {1, 256, 160 >> l, 160 >> l}, l == 0 ? fmt : TensorFormat::kLINEAR));
        }
        io.push_back(dyn(rois, {-1, 5}));
        io.push_back(dyn(out, {-1, 256, 14, 14}));
        bool all = true;
        for (int pos = 0; pos < 7; ++pos)
        {
            all = all && build->supportsFormatCombination(pos, io.data(), 6, 1);
        }
        return all;
    };
    check(combo(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT), "supports FP32 maps + FP32 rois -> FP32");
    check(combo(DataType::kHALF, DataType::kFLOAT, DataType::kHALF), "supports FP16 maps + FP32 rois -> FP16");
    check(!combo(DataType::kHALF, DataType::kHALF, DataType::kHALF), "refuses FP16 rois");
    check(!combo(DataType::kHALF, DataType::kFLOAT, DataType::kFLOAT), "refuses FP16 maps -> FP32 output");
    check(!combo(DataType::kINT8, DataType::kFLOAT, DataType::kINT8), "refuses INT8 maps");
    check(!combo(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, TensorFormat::kCHW32), "refuses non-linear formats");
    check(!combo(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, TensorFormat::kLINEAR, static_cast<int>(DataType::kHALF)),
        "refuses mixed map types");

    // Shapes: [N, C, S, S] with N taken from the rois, C from map 0.
    {
        MockBuilder eb;
        std::vector<std::unique_ptr<MockDim>> own;
        auto dim = [&](bool c, int64_t v) {
            own.emplace_back(new MockDim(c, v));
            return own.back().get();
        };
        DimsExprs in[6];
        for (int l = 0; l < 5; ++l)
        {
            in[l].nbDims = 4;
            in[l].d[0] = dim(false, 0);
            in[l].d[1] = dim(true, 256);
            in[l].d[2] = dim(false, 0);
            in[l].d[3] = dim(false, 0);
        }
        in[5].nbDims = 2;
        in[5].d[0] = dim(false, 0);
        in[5].d[1] = dim(true, 5);
        DimsExprs out[1];
        int32_t const rc = build->getOutputShapes(in, 6, nullptr, 0, out, 1, eb);
        check(rc == 0 && out[0].nbDims == 4 && out[0].d[0] == in[5].d[0] && out[0].d[1] == in[0].d[1]
                && out[0].d[2]->isConstant() && out[0].d[2]->getConstantValue() == 14
                && out[0].d[3]->getConstantValue() == 14,
            "getOutputShapes = [rois.N, maps.C, 14, 14]");
        in[5].nbDims = 3;
        check(build->getOutputShapes(in, 6, nullptr, 0, out, 1, eb) != 0, "getOutputShapes refuses 3-D rois");
        in[5].nbDims = 2;
        in[5].d[1] = dim(true, 4);
        check(build->getOutputShapes(in, 6, nullptr, 0, out, 1, eb) != 0, "getOutputShapes refuses [N, 4] rois");
        in[5].d[1] = dim(true, 5);
        check(build->getOutputShapes(in, 5, nullptr, 0, out, 1, eb) != 0, "getOutputShapes refuses 5 inputs");
    }

    // configure / shape change / workspace.
    {
        std::vector<DynamicPluginTensorDesc> io;
        for (int l = 0; l < 5; ++l)
        {
            io.push_back(dyn(DataType::kHALF, {2, 8, 64 >> l, 80 >> l}));
        }
        io.push_back(dyn(DataType::kFLOAT, {0, 5}));
        io.push_back(dyn(DataType::kHALF, {0, 8, 14, 14}));
        check(build->configurePlugin(io.data(), 6, io.data() + 6, 1) == 0, "configurePlugin");
        check(build->getWorkspaceSize(io.data(), 6, io.data() + 6, 1) == 0, "no workspace");
        std::vector<PluginTensorDesc> desc;
        for (auto const& d : io)
        {
            desc.push_back(d.desc);
        }
        check(runtime->onShapeChange(desc.data(), 6, desc.data() + 6, 1) == 0, "onShapeChange");
        // Zero ROIs: enqueue must return 0 without touching CUDA (null pointers on purpose).
        void const* inputs[6] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
        void* outputs[1] = {nullptr};
        check(runtime->enqueue(desc.data(), desc.data() + 6, inputs, outputs, nullptr, nullptr) == 0,
            "enqueue with zero ROIs is a no-op");
        desc[5].dims.d[1] = 4;
        desc[5].dims.d[0] = 3;
        check(runtime->onShapeChange(desc.data(), 6, desc.data() + 6, 1) != 0, "onShapeChange refuses [N, 4] rois");
    }

    // Serialisation round trip (what engine deserialisation does) and clones.
    {
        int32_t const seven = 7, zero = 0, four = 4, three = 3;
        float const size = 200.f;
        float const scales[2] = {0.0625f, 0.03125f};
        Fields f;
        f.fields.emplace_back("output_size", &seven, PluginFieldType::kINT32, 1);
        f.fields.emplace_back("sampling_ratio", &zero, PluginFieldType::kINT32, 1);
        f.fields.emplace_back("canonical_level", &three, PluginFieldType::kINT32, 1);
        f.fields.emplace_back("canonical_size", &size, PluginFieldType::kFLOAT32, 1);
        f.fields.emplace_back("min_level", &four, PluginFieldType::kINT32, 1);
        int32_t const five = 5;
        f.fields.emplace_back("max_level", &five, PluginFieldType::kINT32, 1);
        f.fields.emplace_back("spatial_scales", scales, PluginFieldType::kFLOAT32, 2);
        std::unique_ptr<IPluginV3> custom(creator->createPlugin("custom", f.get(), TensorRTPhase::kBUILD));
        check(custom != nullptr, "createPlugin with every attribute set");
        std::string const s1 = serialized(custom.get());
        auto* rt = static_cast<IPluginV3OneRuntime*>(custom->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        std::unique_ptr<IPluginV3> restored(
            creator->createPlugin("restored", rt->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
        check(restored != nullptr && serialized(restored.get()) == s1, "serialise -> createPlugin(kRUNTIME) round trip: " + s1);
        std::unique_ptr<IPluginV3> cloned(custom->clone());
        check(cloned != nullptr && serialized(cloned.get()) == s1, "clone keeps the attributes");
        std::unique_ptr<IPluginV3> attached(rt->attachToContext(nullptr));
        check(attached != nullptr && attached.get() != custom.get() && serialized(attached.get()) == s1,
            "attachToContext returns a clone");
        auto* b2 = static_cast<IPluginV3OneBuild*>(custom->getCapabilityInterface(PluginCapabilityType::kBUILD));
        MockBuilder eb;
        MockDim n(false, 0), c(true, 16), h(true, 10), w(true, 12), five5(true, 5);
        DimsExprs in[3];
        for (int l = 0; l < 2; ++l)
        {
            in[l].nbDims = 4;
            in[l].d[0] = &n;
            in[l].d[1] = &c;
            in[l].d[2] = &h;
            in[l].d[3] = &w;
        }
        in[2].nbDims = 2;
        in[2].d[0] = &n;
        in[2].d[1] = &five5;
        DimsExprs out[1];
        check(b2->getOutputShapes(in, 3, nullptr, 0, out, 1, eb) == 0 && out[0].d[2]->getConstantValue() == 7,
            "levels 4..5: two maps + rois, output 7x7");
        char const* meta = b2->getMetadataString();
        check(meta != nullptr && std::strstr(meta, "output_size=7") != nullptr, std::string("metadata: ") + (meta ? meta : "null"));
    }

    if (gpu)
    {
        int devices = 0;
        if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
        {
            check(false, "--gpu given but no CUDA device");
        }
        else
        {
            gpuEnqueue(plugin.get(), lib, DataType::kFLOAT);
            gpuEnqueue(plugin.get(), lib, DataType::kHALF);
        }
    }
    std::printf("%s: %d failure(s)\n", gFailures == 0 ? "ALL PASS" : "FAILED", gFailures);
    return gFailures == 0 ? 0 : 1;
}
