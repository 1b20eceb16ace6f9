// TensorRT IPluginV3 glue of the multi-level RoIAlign: plugin "MultiLevelRoIAlign", version "1", namespace
// "maskface". Inputs: feature maps M_min..M_max [B, C, H_l, W_l] (float32 or float16, one type), then rois
// float32 [N, 5]; output [N, C, S, S] of the features' type. Needs only TensorRT's headers (all interfaces
// are virtual): the library is loaded through IPluginRegistry::loadLibrary / trtexec --dynamicPlugins
// (exports getCreators + setLoggerFinder) or, for dlopen / LD_PRELOAD users such as Triton's TensorRT
// backend, registers itself with an already loaded libnvinfer when it is loaded (see registerAtLoad).
#include "maskface_plugins/mlra_api.h"
#include "maskface_plugins/mlra_math.h"

#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#define MLRA_EXPORT __attribute__((visibility("default")))

namespace maskface
{
namespace
{

using namespace nvinfer1;

constexpr char const* kPluginName = "MultiLevelRoIAlign";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "maskface";

// ------------------------------------------------------------------------------------------------ logging

ILoggerFinder* gLoggerFinder = nullptr;
std::mutex gLoggerMutex;

void log(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const text = std::string(kPluginNamespace) + "::" + kPluginName + ": " + message;
        ILogger* logger = nullptr;
        {
            std::lock_guard<std::mutex> lock(gLoggerMutex);
            if (gLoggerFinder != nullptr)
            {
                logger = gLoggerFinder->findLogger();
            }
        }
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
        else if (severity <= ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "[%s] %s\n", severity == ILogger::Severity::kWARNING ? "W" : "E", text.c_str());
        }
    }
    catch (...)
    {
    }
}

void logError(std::string const& message) noexcept
{
    log(ILogger::Severity::kERROR, message);
}

// ------------------------------------------------------------------------------------------------ attributes

struct Attributes
{
    int32_t output_size{14};
    int32_t sampling_ratio{2};
    int32_t canonical_level{3};
    float canonical_size{224.0f};
    int32_t min_level{2};
    int32_t max_level{6};
    int32_t aligned{1};
    std::vector<float> spatial_scales; // resolved: one per level

    int32_t numLevels() const
    {
        return max_level - min_level + 1;
    }
};

//! Resolve defaults and validate; fills spatial_scales when empty. Returns an error text or "".
std::string finalize(Attributes& a)
{
    mlra::Params p;
    float const* scales = a.spatial_scales.empty() ? nullptr : a.spatial_scales.data();
    if (!a.spatial_scales.empty() && static_cast<int32_t>(a.spatial_scales.size()) != a.numLevels())
    {
        return "spatial_scales has " + std::to_string(a.spatial_scales.size()) + " values for levels "
            + std::to_string(a.min_level) + ".." + std::to_string(a.max_level);
    }
    int const status = mlra::make_params(&p, a.numLevels(), a.output_size, a.sampling_ratio, a.canonical_level,
        a.canonical_size, a.min_level, a.max_level, a.aligned, scales);
    if (status != mlra::kOk)
    {
        return mlra::status_text(status);
    }
    a.spatial_scales.assign(p.spatial_scales, p.spatial_scales + p.num_levels);
    return "";
}

bool readNumbers(PluginField const& f, std::vector<double>& out)
{
    if (f.length < 0 || (f.length > 0 && f.data == nullptr))
    {
        return false;
    }
    out.resize(static_cast<size_t>(f.length));
    for (int32_t i = 0; i < f.length; ++i)
    {
        switch (f.type)
        {
        case PluginFieldType::kINT32: out[i] = static_cast<int32_t const*>(f.data)[i]; break;
        case PluginFieldType::kINT64: out[i] = static_cast<double>(static_cast<int64_t const*>(f.data)[i]); break;
        case PluginFieldType::kINT16: out[i] = static_cast<int16_t const*>(f.data)[i]; break;
        case PluginFieldType::kINT8: out[i] = static_cast<int8_t const*>(f.data)[i]; break;
        case PluginFieldType::kFLOAT32: out[i] = static_cast<float const*>(f.data)[i]; break;
        case PluginFieldType::kFLOAT64: out[i] = static_cast<double const*>(f.data)[i]; break;
        default: return false;
        }
    }
    return true;
}

//! Parse a PluginFieldCollection (creator input or getFieldsToSerialize output). Unknown fields, such as
//! the ONNX parser's string attributes plugin_namespace / plugin_version, are ignored.
std::string parseFields(PluginFieldCollection const* fc, Attributes& a)
{
    if (fc == nullptr)
    {
        return "";
    }
    if (fc->nbFields > 0 && fc->fields == nullptr)
    {
        return "null field array";
    }
    struct IntField
    {
        char const* name;
        int32_t* dst;
    };
    IntField const ints[] = {{"output_size", &a.output_size}, {"sampling_ratio", &a.sampling_ratio},
        {"canonical_level", &a.canonical_level}, {"min_level", &a.min_level}, {"max_level", &a.max_level},
        {"aligned", &a.aligned}};
    std::vector<double> values;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr)
        {
            continue;
        }
        std::string const name(f.name);
        bool known = false;
        for (IntField const& d : ints)
        {
            if (name == d.name)
            {
                known = true;
                if (!readNumbers(f, values) || values.size() != 1 || values[0] != std::floor(values[0])
                    || std::fabs(values[0]) > 1e9)
                {
                    return "attribute " + name + " must be one integer";
                }
                *d.dst = static_cast<int32_t>(values[0]);
            }
        }
        if (name == "canonical_size")
        {
            known = true;
            if (!readNumbers(f, values) || values.size() != 1)
            {
                return "attribute canonical_size must be one number";
            }
            a.canonical_size = static_cast<float>(values[0]);
        }
        else if (name == "spatial_scales")
        {
            known = true;
            if (!readNumbers(f, values))
            {
                return "attribute spatial_scales must be a list of numbers";
            }
            a.spatial_scales.assign(values.begin(), values.end());
        }
        if (!known && f.type != PluginFieldType::kCHAR)
        {
            log(ILogger::Severity::kWARNING, "ignoring unknown attribute " + name);
        }
    }
    return finalize(a);
}

// ------------------------------------------------------------------------------------------------ plugin

class MultiLevelRoIAlignPlugin : public IPluginV3,
                                 public IPluginV3OneCore,
                                 public IPluginV3OneBuild,
                                 public IPluginV3OneRuntime
{
public:
    explicit MultiLevelRoIAlignPlugin(Attributes attrs)
        : mAttrs(std::move(attrs))
    {
    }

    MultiLevelRoIAlignPlugin(MultiLevelRoIAlignPlugin const& other)
        : mAttrs(other.mAttrs)
    {
    }

    MultiLevelRoIAlignPlugin& operator=(MultiLevelRoIAlignPlugin const&) = delete;
    ~MultiLevelRoIAlignPlugin() override = default;

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override
    {
        try
        {
            return new MultiLevelRoIAlignPlugin(*this);
        }
        catch (...)
        {
            logError("clone failed");
            return nullptr;
        }
    }

    // IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override
    {
        return kPluginName;
    }

    AsciiChar const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }

    AsciiChar const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override
    {
        return 1;
    }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override
    {
        if (in == nullptr || out == nullptr || nbInputs != numInputs() || nbOutputs != 1)
        {
            logError("configurePlugin: expected " + std::to_string(numInputs()) + " inputs and 1 output");
            return 1;
        }
        return 0;
    }

    int32_t getOutputDataTypes(
        DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept override
    {
        if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs != numInputs())
        {
            logError("getOutputDataTypes: expected " + std::to_string(numInputs()) + " inputs and 1 output");
            return 1;
        }
        outputTypes[0] = inputTypes[0];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
        int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override
    {
        int32_t const L = mAttrs.numLevels();
        if (inputs == nullptr || outputs == nullptr || nbInputs != L + 1 || nbOutputs != 1)
        {
            logError("getOutputShapes: expected " + std::to_string(L) + " feature maps + rois and 1 output, got "
                + std::to_string(nbInputs) + " inputs");
            return 1;
        }
        for (int32_t i = 0; i < L; ++i)
        {
            if (inputs[i].nbDims != 4)
            {
                logError("getOutputShapes: feature map " + std::to_string(i) + " must be 4-D [B, C, H, W]");
                return 1;
            }
        }
        if (inputs[L].nbDims != 2
            || (inputs[L].d[1]->isConstant() && inputs[L].d[1]->getConstantValue() != 5))
        {
            logError("getOutputShapes: rois must be [N, 5]");
            return 1;
        }
        outputs[0].nbDims = 4;
        outputs[0].d[0] = inputs[L].d[0];
        outputs[0].d[1] = inputs[0].d[1];
        outputs[0].d[2] = exprBuilder.constant(mAttrs.output_size);
        outputs[0].d[3] = exprBuilder.constant(mAttrs.output_size);
        return 0;
    }

    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override
    {
        int32_t const L = mAttrs.numLevels();
        if (inOut == nullptr || nbInputs != L + 1 || nbOutputs != 1 || pos < 0 || pos > L + 1)
        {
            return false;
        }
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        if (pos == 0)
        {
            return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
        }
        if (pos == L)
        {
            return desc.type == DataType::kFLOAT; // rois stay float32 whatever the features are
        }
        return desc.type == inOut[0].desc.type; // other maps and the output follow map 0
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
        DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        return 0;
    }

    char const* getMetadataString() noexcept override
    {
        try
        {
            mMetadata = "output_size=" + std::to_string(mAttrs.output_size)
                + " sampling_ratio=" + std::to_string(mAttrs.sampling_ratio)
                + " canonical_level=" + std::to_string(mAttrs.canonical_level)
                + " canonical_size=" + std::to_string(mAttrs.canonical_size)
                + " levels=" + std::to_string(mAttrs.min_level) + ".." + std::to_string(mAttrs.max_level)
                + " aligned=" + std::to_string(mAttrs.aligned);
            return mMetadata.c_str();
        }
        catch (...)
        {
            return nullptr;
        }
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override
    {
        int32_t const L = mAttrs.numLevels();
        if (in == nullptr || out == nullptr || nbInputs != L + 1 || nbOutputs != 1)
        {
            logError("onShapeChange: wrong number of inputs/outputs");
            return 1;
        }
        if (in[L].dims.nbDims != 2 || (in[L].dims.d[1] != 5 && in[L].dims.d[0] != 0))
        {
            logError("onShapeChange: rois must be [N, 5]");
            return 1;
        }
        for (int32_t i = 0; i < L; ++i)
        {
            if (in[i].dims.nbDims != 4 || in[i].dims.d[0] != in[0].dims.d[0] || in[i].dims.d[1] != in[0].dims.d[1])
            {
                logError("onShapeChange: feature maps must be [B, C, H, W] with one B and C");
                return 1;
            }
        }
        return 0;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
        void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override
    {
        int32_t const L = mAttrs.numLevels();
        int64_t const numRois = inputDesc[L].dims.d[0];
        if (numRois == 0)
        {
            return 0; // no ROI: empty output, nothing to launch
        }
        int64_t const batch = inputDesc[0].dims.d[0];
        int64_t const channels = inputDesc[0].dims.d[1];
        if (numRois > INT32_MAX || batch > INT32_MAX || channels > INT32_MAX)
        {
            logError("enqueue: tensor too large");
            return 1;
        }
        void const* features[mlra::kMaxLevels];
        int heights[mlra::kMaxLevels];
        int widths[mlra::kMaxLevels];
        for (int32_t i = 0; i < L; ++i)
        {
            features[i] = inputs[i];
            heights[i] = static_cast<int>(inputDesc[i].dims.d[2]);
            widths[i] = static_cast<int>(inputDesc[i].dims.d[3]);
        }
        int const dtype = inputDesc[0].type == DataType::kHALF ? mlra::kFloat16 : mlra::kFloat32;
        int const status = mlra_forward_cuda(features, heights, widths, L, static_cast<int>(batch),
            static_cast<int>(channels), static_cast<float const*>(inputs[L]), static_cast<int>(numRois), outputs[0],
            dtype, mAttrs.output_size, mAttrs.sampling_ratio, mAttrs.canonical_level, mAttrs.canonical_size,
            mAttrs.min_level, mAttrs.max_level, mAttrs.aligned, mAttrs.spatial_scales.data(), stream);
        if (status != 0)
        {
            logError(std::string("enqueue: ") + mlra_status_string(status));
            return 1;
        }
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override
    {
        return clone();
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        mFields.clear();
        mFields.emplace_back("output_size", &mAttrs.output_size, PluginFieldType::kINT32, 1);
        mFields.emplace_back("sampling_ratio", &mAttrs.sampling_ratio, PluginFieldType::kINT32, 1);
        mFields.emplace_back("canonical_level", &mAttrs.canonical_level, PluginFieldType::kINT32, 1);
        mFields.emplace_back("canonical_size", &mAttrs.canonical_size, PluginFieldType::kFLOAT32, 1);
        mFields.emplace_back("min_level", &mAttrs.min_level, PluginFieldType::kINT32, 1);
        mFields.emplace_back("max_level", &mAttrs.max_level, PluginFieldType::kINT32, 1);
        mFields.emplace_back("aligned", &mAttrs.aligned, PluginFieldType::kINT32, 1);
        mFields.emplace_back("spatial_scales", mAttrs.spatial_scales.data(), PluginFieldType::kFLOAT32,
            static_cast<int32_t>(mAttrs.spatial_scales.size()));
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
        return &mCollection;
    }

private:
    int32_t numInputs() const
    {
        return mAttrs.numLevels() + 1;
    }

    Attributes mAttrs;
    std::vector<PluginField> mFields;
    PluginFieldCollection mCollection{};
    std::string mMetadata;
};

// ------------------------------------------------------------------------------------------------ creator

class MultiLevelRoIAlignCreator : public IPluginCreatorV3One
{
public:
    MultiLevelRoIAlignCreator()
    {
        // Advertised fields (data == nullptr: defaults apply when a field is absent).
        mFields.emplace_back("output_size", nullptr, PluginFieldType::kINT32, 1);
        mFields.emplace_back("sampling_ratio", nullptr, PluginFieldType::kINT32, 1);
        mFields.emplace_back("canonical_level", nullptr, PluginFieldType::kINT32, 1);
        mFields.emplace_back("canonical_size", nullptr, PluginFieldType::kFLOAT32, 1);
        mFields.emplace_back("min_level", nullptr, PluginFieldType::kINT32, 1);
        mFields.emplace_back("max_level", nullptr, PluginFieldType::kINT32, 1);
        mFields.emplace_back("aligned", nullptr, PluginFieldType::kINT32, 1);
        mFields.emplace_back("spatial_scales", nullptr, PluginFieldType::kFLOAT32, 0);
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
    }

    IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
        override
    {
        try
        {
            Attributes attrs;
            std::string const error = parseFields(fc, attrs);
            if (!error.empty())
            {
                logError(std::string("createPlugin(") + (name ? name : "") + "): " + error);
                return nullptr;
            }
            return new MultiLevelRoIAlignPlugin(std::move(attrs));
        }
        catch (...)
        {
            logError("createPlugin: unexpected exception");
            return nullptr;
        }
    }

    PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mCollection;
    }

    AsciiChar const* getPluginName() const noexcept override
    {
        return kPluginName;
    }

    AsciiChar const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }

    AsciiChar const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }

private:
    std::vector<PluginField> mFields;
    PluginFieldCollection mCollection{};
};

MultiLevelRoIAlignCreator& creator()
{
    static MultiLevelRoIAlignCreator instance;
    return instance;
}

// ------------------------------------------------------------------------------------------------ registration

#define MLRA_STR2(x) #x
#define MLRA_STR(x) MLRA_STR2(x)

IPluginRegistry* gStaticRegistry = nullptr; // registry the load-time registration went to, if any

using GetPluginRegistryFn = IPluginRegistry* (*) ();

//! getPluginRegistry of a TensorRT runtime library already loaded in this process (full, lean or dispatch),
//! without loading one.
GetPluginRegistryFn findLoadedRegistry()
{
    char const* const names[] = {
        "libnvinfer.so." MLRA_STR(NV_TENSORRT_MAJOR),
        "libnvinfer_lean.so." MLRA_STR(NV_TENSORRT_MAJOR),
        "libnvinfer_dispatch.so." MLRA_STR(NV_TENSORRT_MAJOR),
        "libnvinfer.so",
    };
    for (char const* name : names)
    {
        void* handle = dlopen(name, RTLD_LAZY | RTLD_NOLOAD);
        if (handle != nullptr)
        {
            void* sym = dlsym(handle, "getPluginRegistry");
            dlclose(handle); // drops only the reference RTLD_NOLOAD added
            if (sym != nullptr)
            {
                return reinterpret_cast<GetPluginRegistryFn>(sym);
            }
        }
    }
    return reinterpret_cast<GetPluginRegistryFn>(dlsym(RTLD_DEFAULT, "getPluginRegistry"));
}

//! Runs when the library is loaded. If a TensorRT runtime is already in the process (Triton's TensorRT
//! backend dlopen()s plugins after loading libnvinfer; a build with -DMASKFACE_LINK_NVINFER=ON makes it
//! a dependency, so LD_PRELOAD works too), register the creator in its global registry so that engines
//! holding the plugin deserialize without a loadLibrary call. Disable with MASKFACE_PLUGINS_NO_AUTOREGISTER=1.
__attribute__((constructor)) void registerAtLoad()
{
    char const* off = std::getenv("MASKFACE_PLUGINS_NO_AUTOREGISTER");
    if (off != nullptr && off[0] != '\0' && off[0] != '0')
    {
        return;
    }
    GetPluginRegistryFn const get = findLoadedRegistry();
    if (get == nullptr)
    {
        return;
    }
    IPluginRegistry* registry = get();
    if (registry != nullptr && registry->registerCreator(creator(), kPluginNamespace))
    {
        gStaticRegistry = registry;
    }
}

} // namespace
} // namespace maskface

extern "C" {

//! Entry point for IPluginRegistry::loadLibrary / trtexec --dynamicPlugins: receives TensorRT's logger finder.
MLRA_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(maskface::gLoggerMutex);
    maskface::gLoggerFinder = finder;
}

//! Entry point for IPluginRegistry::loadLibrary / trtexec --dynamicPlugins: the creators of this library.
//! loadLibrary fails when a creator is already registered, so a load-time registration is withdrawn first.
MLRA_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* creators[] = {&maskface::creator()};
    if (maskface::gStaticRegistry != nullptr)
    {
        maskface::gStaticRegistry->deregisterCreator(maskface::creator());
        maskface::gStaticRegistry = nullptr;
    }
    nbCreators = 1;
    return creators;
}

} // extern "C"
